"""Turns parsed arguments into an engine run; bad input is one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and library chatter would interleave with our one line per step."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_from_args(args: argparse.Namespace) -> int:
    quiet_libraries()
    from mptui.engine.calibration import CalibrationSpec
    from mptui.engine.errors import EngineError
    from mptui.engine.headless import run
    from mptui.engine.settings import PruneSettings
    from mptui.engine.setup import RunRequest

    try:
        settings = PruneSettings.with_distribution(
            args.target_ratio if args.target_ratio is not None else 0.22,
            args.distribution,
            args.order,
            calibration=CalibrationSpec(
                source=args.calibration or "",
                nsamples=args.nsamples if args.nsamples is not None else 0,
                seqlen=args.seqlen or 2048,
                seed=args.seed,
                text_field=args.text_field,
            ),
            batch_size=args.batch_size,
            mlp_group=args.mlp_group,
            attn_group=args.attn_group,
            block_count=args.block_count,
            prefix_cache=not args.no_prefix_cache,
            faithful=args.faithful,
            guided=args.guided,
        )
        out_dir = Path(args.out or "mptui-out")
        request = RunRequest(
            model=args.model,
            settings=settings,
            dtype=args.dtype,
            device=args.device,
            device_map=args.device_map,
            cache_dir=out_dir / "cache",
        )
    except EngineError as error:
        print(f"mptui: error: {error}", file=sys.stderr)
        return 2
    return run(request, out_dir)
