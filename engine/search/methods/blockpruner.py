"""BlockPruner (docs/method.md §11): the block dimension alone, by sub-block."""

from __future__ import annotations

from typing import Any

from ...errors import BadInput, setting
from .base import Method


class BlockPruner(Method):
    name = "blockpruner"
    faithful_dtype = "bfloat16"

    def faithful_label_id(self, tokenizer: Any, config: Any) -> int | None:
        """The reference ignored the pad token (0 or none masks nothing)."""
        return getattr(config, "pad_token_id", None) or None

    def check_faithful(self, block_count: int | None) -> None:
        if block_count is None:
            raise BadInput(
                setting("faithful"), f" {self.name} needs ", setting("block_count"),
                " (17 gave 21.99% on Llama-2-7B)",
            )  # fmt: skip
