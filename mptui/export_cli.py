"""``mptui export SESSION --out DIR``: a session's plan applied to its dense model, exported.

The dense model is loaded in the precision the session ran in (recorded in its plan), so the
L1 channel order, and with it every kept channel, is the one the search used.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_common import Parser, ProgressLines, loading_lines, print_error


def build_parser():
    parser = Parser(prog="mptui export", description=__doc__)
    parser.add_argument("session", help="session folder (holds plan.json)")
    parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--dtype", default=None, help="load precision (default: the session's)")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if present)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mptui.engine.api import EngineError, describe_export
    from mptui.terminal import quiet_libraries

    quiet_libraries()
    try:
        result = export_session(Path(args.session), Path(args.out), args.dtype, args.device)
    except EngineError as error:
        return print_error(error)
    except OSError as error:
        return print_error(f"the export failed: {error}", 1)
    print(describe_export(result), flush=True)
    return 0


def export_session(session: Path, out: Path, dtype: str | None, device: str | None):
    from mptui.engine.api import (
        RecoveryFolder,
        SessionFolder,
        check_destination,
        export_model,
        rebuild_pruned,
        recovered_model,
    )

    folder = SessionFolder(session)
    plan = folder.read_plan()
    check_destination(out)
    model, tokenizer = rebuild_pruned(
        plan,
        folder.order_file,
        dtype=dtype,
        device=device,
        on_shard=loading_lines(plan.model.name_or_path),
    )
    recovered = recovered_model(model, folder.path)  # once recovered, the recovered model
    card = RecoveryFolder(folder.path).card_info() if recovered is not None else None
    return export_model(
        recovered or model, tokenizer, plan, out, progress=writing_lines(), recovery=card
    )


def export_live(session, out: Path, session_dir: Path) -> int:
    """Export the model a headless run just pruned (it is still in memory); a lost device
    says that ``--resume`` exports again."""
    from mptui.engine.api import (
        EngineError,
        describe_export,
        device_failed,
        export_model,
        is_device_failure,
    )

    if session is None or not session.steps:
        print("mptui: nothing was removed, so nothing is exported", file=sys.stderr)
        return 1
    try:
        result = export_model(
            session.model, session.tokenizer, session.plan(), out, progress=writing_lines()
        )
    except (EngineError, OSError) as error:
        return print_error(f"the export failed: {error}", 1)
    except RuntimeError as error:
        if not is_device_failure(error):
            raise
        return print_error(device_failed(error, f"exporting to {out}", session_dir), 1)
    print(describe_export(result), flush=True)
    return 0


def writing_lines():
    """``writing weights: 1.20 / 3.40 GB (35%)`` lines on stderr, for ``export_model(progress=)``
    (bytes of safetensors written, shard by shard)."""
    return ProgressLines("writing weights", "GB", amount=lambda size: f"{size / 1e9:.2f}")
