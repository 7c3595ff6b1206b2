"""``mptui export SESSION --out DIR`` (or ``--out FILE.gguf``): a session's plan applied to its
dense model, exported as a transformers folder or as one GGUF file for llama.cpp.

The dense model is loaded in the precision the session ran in (recorded in its plan), so the
L1 channel order, and with it every kept channel, is the one the search used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import (
    Doing,
    Parser,
    ProgressLines,
    add_device,
    add_dtype,
    add_gguf_type,
    loading_lines,
    print_error,
    print_failure,
)


def build_parser():
    parser = Parser(prog="mptui export", description=__doc__)
    parser.add_argument("session", help="session folder (holds plan.json)")
    parser.add_argument(
        "--out", required=True, help="folder to write the checkpoint to, or FILE.gguf for GGUF"
    )
    add_format_options(parser)
    add_dtype(parser, None, "the session's")
    add_device(parser)
    return parser


def add_format_options(parser) -> None:
    """``--format`` and ``--gguf-type``, for ``mptui export``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="safetensors: a folder transformers loads; gguf: one file llama.cpp runs "
        "(default: gguf when --out ends in .gguf, else safetensors)",
    )
    add_gguf_type(
        parser, "GGUF weight type; norms and biases stay f32 (default: the weights' own precision)"
    )


#: Export formats: a transformers folder, or one GGUF file (docs/serving.md).
FORMATS = ("safetensors", "gguf")


def export_format(out: Path, chosen: str | None, gguf_type: str | None) -> str:
    """The format asked for: ``chosen``, or told by ``out``'s suffix; checked against the
    other options before anything loads."""
    from mptui.engine.api import BadInput

    is_gguf_name = out.suffix.lower() == ".gguf"
    format_ = chosen or ("gguf" if is_gguf_name else "safetensors")
    if format_ == "safetensors" and is_gguf_name:
        raise BadInput(f"--out {out} names a GGUF file but --format is safetensors")
    if format_ == "safetensors" and gguf_type is not None:
        raise BadInput("--gguf-type applies to --format gguf only")
    return format_


def main(argv: list[str]) -> int:
    """``mptui export ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    from mptui.terminal import quiet_libraries

    doing = Doing("loading the model")
    session, out = Path(args.session), Path(args.out)
    options = "".join(
        f" --{name.replace('_', '-')} {value}"
        for name, value in (("format", args.format), ("gguf_type", args.gguf_type))
        if value is not None
    )
    again = f"run mptui export {session} --out {out}{options} again"
    try:
        format_ = export_format(out, args.format, args.gguf_type)
        quiet_libraries()
        result = export_session(
            session, out, args.dtype, args.device, format_, args.gguf_type, doing
        )
    except OSError as error:
        return print_error(f"the export failed: {error}", 1)
    except Exception as error:  # a lost device or the engine's error: one line (else raised)
        return print_failure(error, doing, session, again)
    print(describe(result), flush=True)
    return 0


def describe(result) -> str:
    """The one line of an export, either format."""
    from mptui.engine.api import describe_export, describe_gguf

    return describe_gguf(result) if hasattr(result, "gguf_type") else describe_export(result)


def export_session(
    session: Path,
    out: Path,
    dtype: str | None,
    device: str | None,
    format_: str = "safetensors",
    gguf_type: str | None = None,
    doing: Doing | None = None,
):
    """Rebuild the session's pruned model and write it to ``out``; ``doing`` is told each
    phase as it starts (for a lost device's line)."""
    from mptui.engine.api import (
        RecoveryFolder,
        SessionFolder,
        check_destination,
        check_gguf_architecture,
        check_gguf_destination,
        rebuild_pruned,
        recovered_model,
    )

    folder = SessionFolder(session)
    plan = folder.read_plan()
    if format_ == "gguf":
        check_gguf_destination(out)
        check_gguf_architecture(plan.model.architecture)
    else:
        check_destination(out)
    doing = doing or Doing("")
    doing("loading the model")
    model, tokenizer = rebuild_pruned(
        plan,
        folder.order_file,
        dtype=dtype,
        device=device,
        on_shard=loading_lines(plan.model.name_or_path),
        before_pruning=lambda model, tokenizer: doing("re-applying the plan"),
    )
    doing("merging the recovery's adapter")
    recovered = recovered_model(model, folder.path)  # once recovered, the recovered model
    card = RecoveryFolder(folder.path).card_info() if recovered is not None else None
    doing(f"exporting to {out}")
    return write_export(recovered or model, tokenizer, plan, out, gguf_type, recovery=card)


def write_export(model, tokenizer, plan, out: Path, gguf_type: str | None, recovery=None):
    """``out`` as a GGUF file when it names one, else as a transformers folder."""
    from mptui.engine.api import export_gguf, export_model

    if out.suffix.lower() == ".gguf":
        return export_gguf(
            model, tokenizer, plan, out, gguf_type=gguf_type, progress=writing_lines()
        )
    return export_model(model, tokenizer, plan, out, progress=writing_lines(), recovery=recovery)


def writing_lines():
    """``writing weights: 1.20 / 3.40 GB (35%)`` lines on stderr, for ``export_model(progress=)``
    (bytes of safetensors written, shard by shard)."""
    return ProgressLines("writing weights", "GB", amount=lambda size: f"{size / 1e9:.2f}")
