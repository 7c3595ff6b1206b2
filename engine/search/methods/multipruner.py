"""MultiPruner (docs/method.md §3, the default): blocks, MLP channels and attention heads."""

from __future__ import annotations

from typing import Any

from .base import Method


class MultiPruner(Method):
    name = "multipruner"
    searches_widths = True
    faithful_dtype = "float16"
    faithful_width_rows = True
    faithful_counts_norms = True

    def faithful_label_id(self, tokenizer: Any, config: Any) -> int | None:
        """The reference ignored EOS (0 masks nothing, as in its test)."""
        return tokenizer.eos_token_id or None

    def check(self, *, faithful: str | None, fast: bool, block_count: int | None) -> None:
        """Accepts every setting: either reference's faithful mode runs under the default."""
