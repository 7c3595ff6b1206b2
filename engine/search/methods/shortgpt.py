"""ShortGPT (docs/method.md §11): layers ranked once by Block Influence on the dense model and
removed from the lowest up; a step's one candidate is still scored."""

from __future__ import annotations

from typing import Any

from ...errors import BadInput, setting
from ..structures import Structure
from .base import LayerMethod


class ShortGpt(LayerMethod):
    name = "shortgpt"

    def check(self, *, faithful: str | None, fast: bool, block_count: int | None) -> None:
        super().check(faithful=faithful, fast=fast, block_count=block_count)
        if fast:
            raise BadInput(
                setting("fast"), " cannot be used with ", setting("method"),
                f" {self.name}: its ranking is computed once and scores no candidates",
            )  # fmt: skip

    def rank(self, pruning: Any) -> list[float]:
        """Block Influence of every layer, on the dense model before any replay."""
        from ..block_influence import block_influence

        scorer = pruning.scorers["blocks"]
        return block_influence(
            pruning.model, pruning.adapter.layers, scorer.chunks, scorer.batch_size
        )

    def block_candidates(self, pruning: Any) -> list[Structure]:
        half = self.half_layer(pruning)
        if half is not None:
            return [half]
        from ..block_influence import influence_order

        layers = {candidate.layer for candidate in self.whole_layer_candidates(pruning)}
        order = influence_order(pruning.block_influence)
        return [Structure("layer", i) for i in order if i in layers][:1]
