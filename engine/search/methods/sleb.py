"""SLEB (docs/method.md §11): every whole layer is a candidate, scored by calibration
perplexity with both its sub-blocks out; the lowest is removed."""

from __future__ import annotations

from typing import Any

from ..structures import Structure
from .base import LayerMethod


class Sleb(LayerMethod):
    name = "sleb"

    def block_candidates(self, pruning: Any) -> list[Structure]:
        half = self.half_layer(pruning)
        return [half] if half is not None else self.whole_layer_candidates(pruning)
