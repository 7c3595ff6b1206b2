"""The searches one engine runs (docs/method.md §11), one object each, and which settings each
accepts.

Every method commits the same structures through the same ``Pruning``; they differ only in what a
step's candidates are (:class:`.base.Method`). ``multipruner`` and ``blockpruner`` score
sub-blocks (and widths); ``sleb`` and ``shortgpt`` remove whole layers, each one committed as
its two sub-blocks. Code elsewhere asks the method object (:func:`method_named`), never compares
a name.
"""

from __future__ import annotations

from ...errors import BadInput, setting
from .base import LayerMethod, Method
from .blockpruner import BlockPruner
from .multipruner import MultiPruner
from .shortgpt import ShortGpt
from .sleb import Sleb

#: The registry: each method by the name ``--method`` takes, in the order help lists them.
REGISTRY: dict[str, Method] = {
    method.name: method for method in (MultiPruner(), BlockPruner(), Sleb(), ShortGpt())
}
METHODS = tuple(REGISTRY)
DEFAULT_METHOD = MultiPruner.name
#: Methods whose candidates are whole layers (a layer is its attention and MLP sub-blocks).
LAYER_METHODS = tuple(name for name, method in REGISTRY.items() if method.whole_layers)
#: The methods ``--faithful`` reproduces (docs/method.md §9).
FAITHFUL_MODES = tuple(name for name, method in REGISTRY.items() if method.faithful_dtype)


def method_named(name: str | None) -> Method:
    """The method called ``name`` (None or "": the default, as older plans record nothing)."""
    try:
        return REGISTRY[name or DEFAULT_METHOD]
    except KeyError:
        raise BadInput(
            setting("method"), f" '{name}' must be one of {', '.join(METHODS)}"
        ) from None


__all__ = [
    "DEFAULT_METHOD",
    "FAITHFUL_MODES",
    "LAYER_METHODS",
    "METHODS",
    "REGISTRY",
    "LayerMethod",
    "Method",
    "method_named",
]
