"""The searches one engine runs (docs/method.md §11), and which settings each accepts.

Every method commits the same structures through the same session; they differ only in what a
step's candidates are. ``multipruner`` and ``blockpruner`` score sub-blocks (and widths);
``sleb`` and ``shortgpt`` remove whole layers, each one committed as its two sub-blocks.
"""

from __future__ import annotations

from .errors import BadInput

METHODS = ("multipruner", "blockpruner", "sleb", "shortgpt")
DEFAULT_METHOD = "multipruner"
#: Methods whose candidates are whole layers (a layer is its attention and MLP sub-blocks).
LAYER_METHODS = ("sleb", "shortgpt")


def check_method(method: str, *, faithful: str | None, fast: bool, block_count: int | None) -> None:
    """One line of BadInput for a method that does not exist or a setting it cannot honour."""
    if method not in METHODS:
        raise BadInput(f"--method '{method}' must be one of {', '.join(METHODS)}")
    if method in LAYER_METHODS:
        if faithful is not None:
            raise BadInput(
                f"--faithful {faithful} cannot be used with --method {method}: faithful mode "
                "repeats the MultiPruner and BlockPruner references only"
            )
        if block_count is not None:
            raise BadInput(
                f"--block-count cannot be used with --method {method}: it removes whole layers "
                "until the target ratio"
            )
    if method == "shortgpt" and fast:
        raise BadInput(
            "--fast cannot be used with --method shortgpt: its ranking is computed once and "
            "scores no candidates"
        )
    if faithful is not None and method != faithful and method != DEFAULT_METHOD:
        raise BadInput(f"--faithful {faithful} cannot be used with --method {method}")


def searches_widths(method: str) -> bool:
    """Only MultiPruner removes MLP channels and attention heads; the others prune blocks."""
    return method == DEFAULT_METHOD
