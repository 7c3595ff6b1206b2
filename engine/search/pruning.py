"""The state of one pruning run: the model as pruned so far, its plan, budget and eligibility.

This is the part of MultiPruner that does not care who drives it: the runner (greedy, guided,
or a user's override) decides *which* structure; :class:`Pruning` knows which ones are eligible,
what each would cost and free, and how to commit and undo exactly. The search method
(:mod:`.methods`) decides what a block candidate is: a sub-block, or a whole layer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BadInput, setting
from ..model.adapters import Adapter, CommitRecord
from ..model.facts import check_group_sizes
from .fast_search import Evaluation, perplexity
from .methods import LAYER_METHODS, method_named
from .plan import Plan, PlanModel, PlanStep
from .scoring import Scorer
from .settings import GroupSizes, PruneSettings
from .structures import Dimension, Structure, parse_structure_id


@dataclass
class StepStats:
    """What a step cost, reported per step (docs/method.md §6)."""

    seconds: float = 0.0
    candidates: int = 0
    tokens: int = 0


@dataclass
class Pruning:
    """The model in memory as it is being pruned: the model, its adapter, scorers and settings,
    and the steps committed so far (with what undoes each); the session folder on disk
    (engine/session/) is another thing. Not thread-safe: only the engine thread touches it."""

    model: nn.Module
    adapter: Adapter
    settings: PruneSettings
    groups: GroupSizes
    scorers: dict[str, Scorer]
    name_or_path: str
    count_removed_norms: bool = False
    tokenizer: Any = None  # saved with an export
    steps: list[PlanStep] = field(default_factory=list)
    records: list[CommitRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params_dense = self.model.num_parameters()
        self.params_layers_dense = sum(p.numel() for p in self.adapter.layers.parameters())
        self.params_removed = 0
        self.dense_scores = {dim: s.current_score() for dim, s in self.scorers.items()}
        self.method = method_named(self.settings.method)
        # on the dense model, before any replay; ShortGPT's candidates follow it
        self.block_influence: list[float] | None = self.method.rank(self)
        check_group_sizes(self.groups, self.settings.shares, self.adapter.widths)

    # --- budget ---------------------------------------------------------------------------------
    @property
    def params(self) -> int:
        return self.params_dense - self.params_removed

    def ratio(self, params_removed: int | None = None) -> float:
        removed = self.params_removed if params_removed is None else params_removed
        return removed / self.params_dense

    @property
    def ratio_layers(self) -> float:
        return self.params_removed / self.params_layers_dense

    @property
    def blocks_removed(self) -> int:
        return sum(1 for s in self.steps if s.dimension == "blocks")

    def dimension_done(self, dimension: str) -> bool:
        settings = self.settings
        if settings.shares.get(dimension, 0.0) <= 0.0 or not self.eligible(dimension):
            return True
        if dimension == "blocks" and self._half_layer() is not None:
            return False  # a layer method never stops between a layer's two sub-blocks
        if dimension == "blocks" and settings.block_count is not None:
            return self.blocks_removed >= settings.block_count
        return self.ratio() >= settings.targets()[dimension]

    def current_dimension(self) -> Dimension | None:
        """First dimension, in the current order, that is below its cumulative target."""
        for dimension in self.settings.order:
            if not self.dimension_done(dimension):
                return dimension
        return None

    # --- eligibility ----------------------------------------------------------------------------
    def eligible(self, dimension: str) -> list[Structure]:
        """Candidates of ``dimension`` in canonical order (docs/method.md §3)."""
        if dimension == "blocks":
            return self.method.block_candidates(self)
        out = []
        for layer in range(self.adapter.num_layers):
            candidate = self.width_structure(dimension, layer)
            if candidate is not None:
                out.append(candidate)
        return out

    def present_parts(self, structure: Structure) -> list[Structure]:
        return [
            part
            for part in structure.parts
            if self.adapter.has_block(part.layer, part.kind.removesuffix("_block"))
        ]

    def _half_layer(self) -> Structure | None:
        """Under a layer method, the sub-block left of a layer whose other one is gone."""
        return self.method.half_layer(self)

    def last_removal(self) -> int:
        """How many steps the last removal took: a layer method's layer is two steps (both of
        its sub-blocks, in that order), everything else one."""
        return self.method.last_removal(self.steps)

    def width_structure(self, dimension: str, layer: int) -> Structure | None:
        """The next width step of ``layer``, or None when the layer is not eligible."""
        if dimension == "mlp_channels":
            width, group = self.adapter.mlp_width(layer), self.groups.mlp
        else:
            width = self.adapter.attn_groups(layer) * self.adapter.attn_group_channels
            group = self.groups.attn
        if width - group <= 0:
            return None
        return Structure(dimension, layer, remove=group, width_after=width - group)

    def structure_from_id(self, text: str) -> Structure:
        """Resolve a user's structure id to the eligible structure it names."""
        try:
            kind, layer = parse_structure_id(text)
        except ValueError as error:
            raise BadInput(str(error)) from None
        if not 0 <= layer < self.adapter.num_layers:
            raise BadInput(
                f"layer {layer} does not exist (the model has {self.adapter.num_layers})"
            )
        if kind == "layer" and not self.method.whole_layers:
            raise BadInput(
                f"L{layer} names a whole layer, a candidate of ",
                setting("method"),
                f" {' and '.join(LAYER_METHODS)} only",
            )
        if kind in ("attn_block", "mlp_block", "layer"):
            structure = Structure(kind, layer)
            if len(self.present_parts(structure)) < len(structure.parts):
                raise BadInput(f"{structure.id} is already removed, in part or whole")
            return structure
        candidate = self.width_structure(kind, layer)
        if candidate is None:
            raise BadInput(f"layer {layer} has no {kind.replace('_', ' ')} left to remove")
        return candidate

    def params_freed(self, structure: Structure) -> int:
        return sum(
            self.adapter.params_freed(part, count_removed_norms=self.count_removed_norms)
            for part in structure.parts
        )

    # --- scoring, commit, undo -----------------------------------------------------------------
    def scorer_for(self, structure: Structure) -> Scorer:
        return self.scorers[structure.dimension]

    def score_candidate(self, structure: Structure) -> float:
        """Calibration perplexity of the current model with ``structure`` removed."""
        return perplexity(self.candidate_row_nll(structure))

    def candidate_row_nll(self, structure: Structure, rows: range | None = None) -> torch.Tensor:
        """Per-row NLLs (:meth:`Scorer.row_nll`) of the model with ``structure`` removed."""
        scorer = self.scorer_for(structure)
        scorer.catch_up()  # before the trial: the boundaries must describe the model as it is
        with contextlib.ExitStack() as trials:
            for part in structure.parts:
                trials.enter_context(self.adapter.trial(part))
            return scorer.row_nll(structure.sub_block, rows)

    def evaluations(self, dimension: str, candidates: Sequence[Structure]) -> Iterator[Evaluation]:
        """The step's scoring, one evaluation at a time: exact, or successive halving when the
        settings ask for the fast search (:mod:`.fast_search`)."""
        total_rows = len(self.scorers[dimension].chunks)
        return self.method.evaluations(self, candidates, self.candidate_row_nll, total_rows)

    def current_score(self, dimension: str) -> float:
        return self.scorers[dimension].current_score()

    def commit(
        self, structure: Structure, score: float, chosen_by: str, stats: StepStats | None = None
    ) -> PlanStep:
        """Remove ``structure`` (one sub-block or width step) for good and return its plan entry.

        Atomic: if following the change fails (out of memory refreshing the prefix cache), the
        structure is put back and the error raised, so model, count and plan still agree.
        """
        freed = self.params_freed(structure)
        record = self.adapter.commit(structure)
        self.params_removed += freed
        try:
            self._follow_change(structure)
        except BaseException:
            self.adapter.undo(record)
            self.params_removed -= freed
            self._mark_changed(structure)
            raise
        self.records.append(record)
        stats = stats or StepStats()
        step = PlanStep(
            index=len(self.steps) + 1,
            structure=structure,
            score=score,
            params=self.params,
            ratio=self.ratio(),
            chosen_by=chosen_by,
            ratio_layers=self.ratio_layers,
            seconds=round(stats.seconds, 3),
            candidates=stats.candidates,
            tokens=stats.tokens,
        )
        self.steps.append(step)
        return step

    def undo(self) -> PlanStep:
        """Put the last committed structure back and return its plan entry (atomic too)."""
        if not self.steps:
            raise BadInput("nothing to undo")
        record = self.records[-1]
        self.adapter.undo(record)
        freed = self.params_freed(record.structure)  # counted on the restored module
        self.params_removed -= freed
        try:
            self._follow_change(record.structure)
        except BaseException:
            self.records[-1] = self.adapter.commit(record.structure)
            self.params_removed += freed
            self._mark_changed(record.structure)
            raise
        self.records.pop()
        return self.steps.pop()

    def replay(
        self, steps: Sequence[PlanStep], interrupt: Callable[[], None] | None = None
    ) -> None:
        """Re-apply recorded steps (resume) with their recorded scores; the caches catch up once
        at the end instead of after every step. ``interrupt`` runs between steps."""
        for step in steps:
            if interrupt is not None:
                interrupt()
            structure = step.structure
            self.params_removed += self.params_freed(structure)
            self.records.append(self.adapter.commit(structure))
            self._mark_changed(structure)
            self.steps.append(
                step.renumbered(len(self.steps) + 1, self.params, self.ratio(), self.ratio_layers)
            )

    @contextlib.contextmanager
    def dense_model(self) -> Iterator[nn.Module]:
        """The dense model for a while (every commit undone exactly), then the pruned one again.

        Re-committing restores the very same values, so the scorers' caches stay valid.
        """
        structures = [record.structure for record in self.records]
        for record in reversed(self.records):
            self.adapter.undo(record)
        self.records = []
        try:
            yield self.model
        finally:
            self.records = [self.adapter.commit(structure) for structure in structures]

    def _mark_changed(self, structure: Structure) -> None:
        for scorer in self._distinct_scorers():
            scorer.mark_changed(structure.sub_block)

    def _follow_change(self, structure: Structure) -> None:
        """Every scorer learns of the change; only the running dimension's recomputes now, the
        others when their dimension starts (docs/method.md §4)."""
        self._mark_changed(structure)
        dimension = self.current_dimension()
        if dimension is not None:
            self.scorers[dimension].catch_up()

    def release_scorers(self) -> None:
        """The search is over for good (a recovery starts): its calibration caches are freed."""
        for scorer in self._distinct_scorers():
            scorer.release()

    def _distinct_scorers(self) -> list[Scorer]:
        return list({id(s): s for s in self.scorers.values()}.values())

    # --- the plan -------------------------------------------------------------------------------
    def plan(self) -> Plan:
        first = self.settings.order[0]
        return Plan(
            model=PlanModel(
                name_or_path=self.name_or_path,
                architecture=type(self.model).__name__,
                dtype=str(next(self.model.parameters()).dtype).removeprefix("torch."),
                params_dense=self.params_dense,
                num_layers=self.adapter.num_layers,
                mlp_width=self.adapter.dense_mlp_width,
                attn_width=self.adapter.dense_kv_groups * self.adapter.attn_group_channels,
            ),
            settings={
                **self.settings.to_dict(),
                "mlp_group": self.groups.mlp,
                "attn_group": self.groups.attn,
                "group_source": str(self.groups.source),
                "count_removed_norms": self.count_removed_norms,
                "batch_size_used": self.scorers[first].batch_size,
                "fast_margin": self.settings.fast_margin if self.settings.fast else None,
                "fast_tolerance": self.settings.fast_tolerance if self.settings.fast else None,
                "block_influence": self.block_influence,
            },
            dense_score=self.dense_scores[first],
            dense_scores=dict(self.dense_scores),
            steps=list(self.steps),
            written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
