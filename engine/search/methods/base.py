"""What every search method is (docs/method.md §11): one small protocol, one object per method.

A method decides a step's block candidates, which settings it accepts and refuses, how a step is
scored, the notes it prints at load, what its faithful mode (docs/method.md §9) reproduces, and
which of its plan's points a report marks. Everything else (scoring, commit, undo, the plan) is
the ``Pruning``'s, shared by all of them. Nothing outside this package compares a method's name.

The ``Pruning`` is passed in, never imported (it imports this package): a method reads
``pruning.adapter``, ``pruning.settings``, ``pruning.scorers``, ``pruning.model``,
``pruning.block_influence`` and ``pruning.present_parts``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import BadInput, Message, setting
from ..structures import Structure

if TYPE_CHECKING:  # torch: a plan-only reader (compare, report) never imports it
    from ..fast_search import Evaluation


class Method:
    """A search. Subclasses set the class attributes and override what differs."""

    #: The name ``--method`` takes and the plan records.
    name: ClassVar[str] = ""
    #: Whether a candidate is a whole layer (both its sub-blocks, committed as two steps).
    whole_layers: ClassVar[bool] = False
    #: Whether it removes MLP channels and attention heads as well as blocks.
    searches_widths: ClassVar[bool] = False
    #: Faithful mode (docs/method.md §9): the reference's precision, None when it has none.
    faithful_dtype: ClassVar[str | None] = None

    # --- settings ---------------------------------------------------------------------------------
    def check(self, *, faithful: str | None, fast: bool, block_count: int | None) -> None:
        """One line of BadInput for a setting this method cannot honour."""
        if faithful is not None and faithful != self.name:
            raise BadInput(
                setting("faithful"), f" {faithful} cannot be used with ", setting("method"),
                f" {self.name}",
            )  # fmt: skip

    # --- the search -------------------------------------------------------------------------------
    def rank(self, pruning: Any) -> list[float] | None:
        """A ranking computed once on the dense model (ShortGPT's Block Influence), or None."""
        return None

    def block_candidates(self, pruning: Any) -> list[Structure]:
        """The block dimension's candidates: every sub-block still present."""
        adapter, layers = pruning.adapter, range(pruning.adapter.num_layers)
        attn = [Structure("attn_block", i) for i in layers if adapter.has_block(i, "attn")]
        mlp = [Structure("mlp_block", i) for i in layers if adapter.has_block(i, "mlp")]
        return attn + mlp

    def half_layer(self, pruning: Any) -> Structure | None:
        """The sub-block to finish before anything else (a layer method's half-removed layer)."""
        return None

    def last_removal(self, steps: Sequence[Any]) -> int:
        """How many of the last steps one removal took (undo takes them back together)."""
        return 1

    def evaluations(
        self,
        pruning: Any,
        candidates: Sequence[Structure],
        row_nll: Callable[..., Any],
        total_rows: int,
    ) -> Iterator[Evaluation]:
        """How a step is scored: every candidate on every row, or successive halving with
        ``--fast`` (:mod:`..fast_search`)."""
        from ..fast_search import exhaustive, successive_halving

        settings = pruning.settings
        if settings.fast:
            return successive_halving(
                candidates, row_nll, total_rows, settings.fast_margin, settings.fast_tolerance
            )
        return exhaustive(candidates, row_nll, total_rows)

    # --- what it prints ---------------------------------------------------------------------------
    def notes(
        self, *, group_source: Message, attn_group: int, attn_width: int, fast: bool
    ) -> list[Message]:
        """The notes printed once the model is loaded."""
        notes = []
        if self.searches_widths:
            notes.append(Message.of("group sizes: ", group_source))
        if fast:
            notes.append(
                Message.of(
                    "fast search (",
                    setting("fast"),
                    "): candidates are ruled out on a few rows first; an approximation of the "
                    "exact search (docs/method.md §4)",
                )
            )
        if self.searches_widths and attn_group * 4 > attn_width:
            notes.append(
                Message.of(
                    f"the attention group ({attn_group} channels) is more than a quarter of the "
                    f"attention width ({attn_width}); each head step is coarse"
                )
            )
        return notes

    # --- faithful mode ----------------------------------------------------------------------------
    def faithful_label_id(self, tokenizer: Any, config: Any) -> int | None:
        """The label id its reference ignored in faithful mode; None masks nothing."""
        return None

    #: Faithful mode draws separate rows for the width dimensions (MultiPruner's reference).
    faithful_width_rows: ClassVar[bool] = False
    #: Faithful mode counts the norms of removed blocks as removed (MultiPruner's reference).
    faithful_counts_norms: ClassVar[bool] = False

    def check_faithful(self, block_count: int | None) -> None:
        """One line of BadInput when faithful mode lacks a setting its reference needs."""

    # --- how its plan is drawn --------------------------------------------------------------------
    def drawn_points(self, steps: Sequence[Any]) -> list[int]:
        """The points of its curve (0 the dense model, ``i`` after step ``i``) that a report
        marks: every one, or a layer method's whole-layer points only."""
        return list(range(len(steps) + 1))


class LayerMethod(Method):
    """The methods whose candidates are whole layers (SLEB, ShortGPT)."""

    whole_layers = True

    def check(self, *, faithful: str | None, fast: bool, block_count: int | None) -> None:
        if faithful is not None:
            raise BadInput(
                setting("faithful"), f" {faithful} cannot be used with ", setting("method"),
                f" {self.name}: faithful mode repeats the MultiPruner and BlockPruner references "
                "only",
            )  # fmt: skip
        if block_count is not None:
            raise BadInput(
                setting("block_count"), " cannot be used with ", setting("method"),
                f" {self.name}: it removes whole layers until the target ratio",
            )  # fmt: skip

    def whole_layer_candidates(self, pruning: Any) -> list[Structure]:
        return [
            Structure("layer", layer)
            for layer in range(pruning.adapter.num_layers)
            if pruning.present_parts(Structure("layer", layer))
        ]

    def half_layer(self, pruning: Any) -> Structure | None:
        for layer in range(pruning.adapter.num_layers):
            present = pruning.present_parts(Structure("layer", layer))
            if len(present) == 1:
                return present[0]
        return None

    def last_removal(self, steps: Sequence[Any]) -> int:
        if len(steps) >= 2:
            before, last = steps[-2].structure, steps[-1].structure
            if Structure("layer", last.layer).parts == (before, last):
                return 2
        return 1

    def drawn_points(self, steps: Sequence[Any]) -> list[int]:
        """The dense model and every point where the model has only whole layers removed."""
        points, halves = [0], set()
        for index, step in enumerate(steps, start=1):
            halves ^= {step.structure.layer}  # a layer is half removed after one of its two
            if not halves:
                points.append(index)
        return points
