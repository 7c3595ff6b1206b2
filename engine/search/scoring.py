"""Calibration perplexity (docs/method.md §2) with the exact prefix cache of docs/method.md §4.

The model is run sub-block by sub-block (``2*L`` residual sub-blocks: attention then MLP of
each layer) with the decoder layers' own modules and the exact keyword arguments the model
passes them (captured once per batch shape). A candidate at sub-block ``b`` leaves everything
before ``b`` unchanged, so the hidden states entering ``b`` — a *boundary* — can be cached and
only the suffix run. Boundaries are stored every ``stride`` sub-blocks to fit a memory budget;
a candidate starts from the nearest stored boundary at or before its own. With the cache off
every candidate starts from the embeddings, which is the reference's cost.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OutOfMemory, setting
from ..model.adapters import Adapter
from ..model.batching import auto_batch_size
from ..model.compiled import SubBlockRunner
from ..model.memory import is_out_of_memory
from ..model.pruned_modeling import is_removed

_T = TypeVar("_T")

#: Largest float32 logits block computed at once, in elements (256 MiB).
LOSS_CHUNK_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True)
class CachePlan:
    """Which boundaries are kept, and why: the stride and the bytes it costs."""

    stride: int
    boundary_bytes: int
    stored: int
    budget_bytes: int = 0  # 0: no cache asked for


class _StopCapture(Exception):
    """Raised by the last recorder to end a capture forward before the LM head runs."""


class _LayerRecorder(nn.Module):
    """Takes a decoder layer's place for one forward and records what the model passes it."""

    def __init__(self, layer: nn.Module, sink: list, is_last: bool) -> None:
        super().__init__()
        self._signature = inspect.signature(layer.forward)
        self._sink = sink
        self._is_last = is_last
        if hasattr(layer, "attention_type"):  # Qwen2/3 and Mistral pick a mask per layer type
            self.attention_type = layer.attention_type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        extra = arguments.pop("kwargs", {})
        arguments.update(extra)
        hidden = arguments.pop("hidden_states")
        self._sink.append((hidden, arguments))
        if self._is_last:
            raise _StopCapture
        return hidden


def move_to(value: Any, device: torch.device) -> Any:
    """Move every tensor inside nested tuples/lists/dicts to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple):
        return tuple(move_to(v, device) for v in value)
    if isinstance(value, list):
        return [move_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


def default_cache_budget(device: torch.device) -> int:
    """Half the free memory of the device that holds the activations (CPU: a third of RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    import psutil

    return int(psutil.virtual_memory().available / 3)


class Scorer:
    """Perplexity of the model as it is now, from any sub-block on.

    ``score(b)`` gives the calibration perplexity of the *current* model (a trial structure
    applied by the adapter counts as current), recomputing only sub-blocks ``>= b`` when the
    boundary before ``b`` is cached. After a commit or an undo at sub-block ``b`` call
    :meth:`mark_changed` with ``b``, then :meth:`catch_up` (before any trial is applied) so that
    the boundaries behind it follow the model.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        chunks: torch.Tensor,
        batch_size: int | None = None,
        *,
        prefix_cache: bool = True,
        compile_backend: str | Callable | None = None,
        cache_budget_bytes: int | None = None,
        ignore_label_id: int | None = None,
        on_warning: Callable[[str], None] | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        """``batch_size``: rows per forward; None chooses it from the device's memory
        (:func:`~.batching.auto_batch_size`). ``interrupt`` is called between batches of the
        initial (dense) pass and may raise to abandon it: a Stop while a 7B's calibration set
        runs through it must not wait. ``compile_backend``: run the sub-blocks through
        ``torch.compile`` with it (None: eagerly; :mod:`.compiled`)."""
        self.model = model
        self.adapter = adapter
        self.chunks = chunks
        if batch_size is None:
            batch_size = auto_batch_size(model, adapter, len(chunks), chunks.shape[1])
        self.batch_size = max(1, min(batch_size, len(chunks)))
        self.prefix_cache = prefix_cache
        self.ignore_label_id = ignore_label_id
        self._on_warning = on_warning or (lambda message: None)
        self.runner = SubBlockRunner(compile_backend, self._on_warning)
        self._contexts: dict[int, list[dict[str, Any]]] = {}
        self._device_contexts: dict[tuple[int, int, str], dict[str, Any]] = {}
        self._boundaries: dict[int, torch.Tensor] = {}
        self._labels_by_device: dict[torch.device, torch.Tensor] = {}
        self.num_sub_blocks = 2 * adapter.num_layers
        self._embed_boundary(interrupt)
        self.cache_plan = self._plan_cache(cache_budget_bytes)
        self._stale_from: int | None = 0  # every boundary after the embeddings is still to come
        self._current_score: float | None = None
        self.catch_up(interrupt)

    # --- set-up -------------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return self.chunks.numel()

    def _batches(self, rows: range | None = None) -> list[slice]:
        """Slices of at most ``batch_size`` rows covering ``rows`` (default: all)."""
        rows = range(len(self.chunks)) if rows is None else rows
        size = self.batch_size
        return [slice(i, min(i + size, rows.stop)) for i in range(rows.start, rows.stop, size)]

    def _capture(self, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Run the model's own forward up to the first layer and record every layer's inputs."""
        layers = self.adapter.layers
        sink: list = []
        originals = list(layers)
        for index, layer in enumerate(originals):
            layers[index] = _LayerRecorder(layer, sink, is_last=index == len(originals) - 1)
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, use_cache=False)
        except _StopCapture:
            pass
        finally:
            for index, layer in enumerate(originals):
                layers[index] = layer
        return sink

    def _embed_boundary(self, interrupt: Callable[[], None] | None) -> None:
        """Boundary 0 is the input to layer 0 (embeddings, plus positions where the model adds
        them); both cached and naive scoring start here."""
        device = self.model.get_input_embeddings().weight.device
        parts = []
        for batch in self._batches():
            if interrupt is not None:
                interrupt()
            ids = self.chunks[batch].to(device)
            records = self._capture(ids)
            parts.append(records[0][0])
            self._contexts.setdefault(len(ids), [kwargs for _hidden, kwargs in records])
        # An inference tensor, as every later boundary is: a compiled sub-block fed both kinds
        # compiles a graph for each (dynamo guards on the difference), which doubled compiles.
        with torch.inference_mode():
            self._boundaries[0] = torch.cat(parts)

    def _context(self, batch_len: int, layer: int, device: torch.device) -> dict[str, Any]:
        if batch_len not in self._contexts:
            ids = self.chunks[:batch_len].to(self.model.get_input_embeddings().weight.device)
            self._contexts[batch_len] = [kwargs for _hidden, kwargs in self._capture(ids)]
        key = (batch_len, layer, str(device))
        if key not in self._device_contexts:
            self._device_contexts[key] = move_to(self._contexts[batch_len][layer], device)
        return self._device_contexts[key]

    def _plan_cache(self, budget: int | None) -> CachePlan:
        boundary = self._boundaries[0]
        boundary_bytes = boundary.numel() * boundary.element_size()
        if not self.prefix_cache:
            return CachePlan(self.num_sub_blocks, boundary_bytes, 1)
        if budget is None:
            budget = default_cache_budget(boundary.device)
        wanted = self.num_sub_blocks * boundary_bytes
        stride = max(1, math.ceil(wanted / max(budget, 1)))
        if stride > 1:
            self._on_warning(
                f"prefix cache limited to every {stride}th boundary "
                f"({budget / 2**30:.1f} GiB budget, {wanted / 2**30:.1f} GiB for all)"
            )
        stride = min(stride, self.num_sub_blocks)
        stored = len(range(0, self.num_sub_blocks, stride))
        return CachePlan(stride, boundary_bytes, stored, budget)

    # --- running sub-blocks -------------------------------------------------------------------
    def _run_sub_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        adapter = self.adapter
        layer_index, is_mlp = divmod(index, 2)
        layer = adapter.layers[layer_index]
        block = getattr(layer, adapter.mlp if is_mlp else adapter.attn)
        if is_removed(block):
            return hidden
        norm = getattr(layer, adapter.mlp_norm if is_mlp else adapter.attn_norm)
        device = next(block.parameters()).device
        hidden = hidden.to(device)
        if is_mlp:
            return self.runner.mlp(block, norm, hidden)
        kwargs = self._context(hidden.shape[0], layer_index, device)
        return self.runner.attention(block, norm, hidden, kwargs)

    def _labels(self, device: torch.device) -> torch.Tensor:
        """Every row's labels on ``device``, copied there once rather than once per batch."""
        labels = self._labels_by_device.get(device)
        if labels is None:
            labels = self._labels_by_device[device] = self.chunks[:, 1:].to(device)
        return labels

    def _sequence_nll(self, hidden: torch.Tensor, batch: slice) -> torch.Tensor:
        """Mean token NLL of each sequence of ``batch``, on float32 logits, in slices of at most
        :data:`LOSS_CHUNK_ELEMENTS` logits; it stays on the head's device (no host sync)."""
        norm, head = self.adapter.final_norm(), self.adapter.lm_head()
        device = head.weight.device
        hidden = norm(hidden.to(next(norm.parameters(), head.weight).device)).to(device)
        labels = self._labels(device)[batch]
        hidden = hidden[:, :-1]
        rows, length = labels.shape
        vocab = head.weight.shape[0]
        step = max(1, LOSS_CHUNK_ELEMENTS // max(1, vocab * rows))
        total = torch.zeros(rows, dtype=torch.float64, device=device)
        for start in range(0, length, step):
            logits = head(hidden[:, start : start + step]).float()
            target = labels[:, start : start + step]
            # rows of the vocabulary stay contiguous: a transposed [B, V, T] layout is slower
            nll = F.cross_entropy(
                logits.reshape(-1, vocab), target.reshape(-1), reduction="none"
            ).view(target.shape)
            if self.ignore_label_id is not None:
                nll = nll.masked_fill(target == self.ignore_label_id, 0.0)
            total += nll.double().sum(dim=1)
        if self.ignore_label_id is None:
            counts = torch.full_like(total, float(length))
        else:
            counts = (labels != self.ignore_label_id).double().sum(dim=1).clamp_min(1.0)
        return total / counts

    # --- public -------------------------------------------------------------------------------
    def score(self, start: int = 0, rows: int | None = None) -> float:
        """Perplexity of the current model; sub-blocks before ``start`` must be unchanged.

        ``rows``: only the first ``rows`` calibration rows; default all. Only fresh boundaries
        are used, so the result is exact even before :meth:`catch_up`; catching up first only
        makes it cheaper.
        """
        rows = len(self.chunks) if rows is None else rows
        return math.exp(self.row_nll(start, range(min(rows, len(self.chunks)))).mean().item())

    def row_nll(self, start: int = 0, rows: range | None = None) -> torch.Tensor:
        """Mean token NLL of each calibration row in ``rows`` (default all), float64 on the
        CPU, for the current model as :meth:`score` computes it (one host sync in all)."""
        rows = range(len(self.chunks)) if rows is None else rows
        return self._with_oom_fallback(lambda: self._row_nll(start, rows))

    def current_score(self) -> float:
        """Perplexity of the model as it is (only the last sub-block runs once caught up)."""
        if self._current_score is None:
            self.catch_up()
            self._current_score = self.score(self.num_sub_blocks - 1)
        return self._current_score

    def cost(self, start: int) -> int:
        """The work :meth:`score` does for a candidate at ``start``, in sub-blocks: the suffix
        from the nearest fresh boundary, plus one for the final norm and LM head that every
        candidate runs (about a sub-block's work on a 7B). It splits a step across workers."""
        return self.num_sub_blocks - self._fresh_origin(start) + 1

    def mark_changed(self, changed: int) -> None:
        """Sub-block ``changed`` was committed or undone: boundaries after it are stale.

        Cheap; the recomputation waits for :meth:`catch_up`, so a scorer whose dimension is not
        running pays nothing until it is needed.
        """
        self._stale_from = changed if self._stale_from is None else min(self._stale_from, changed)
        self._current_score = None

    def release(self) -> None:
        """Free the cached boundaries for good: the search is over and a recovery needs the
        memory (on a 7B they can take several GB of the GPU). The scorer scores no more."""
        self._boundaries.clear()
        self._device_contexts.clear()
        self._contexts.clear()

    @property
    def is_fresh(self) -> bool:
        return self._stale_from is None

    def catch_up(self, interrupt: Callable[[], None] | None = None) -> None:
        """Recompute the stale boundaries, in place; ``interrupt`` is called between batches and
        may raise to abandon the work (the boundaries then stay stale, never half fresh)."""
        if self._stale_from is None:
            return
        changed = self._stale_from
        self._with_oom_fallback(lambda: self._refresh(changed, interrupt))
        self._stale_from = None

    def _with_oom_fallback(self, work: Callable[[], _T]) -> _T:
        while True:
            try:
                return work()
            except RuntimeError as error:  # torch's OutOfMemoryError and CUDA's other wordings
                if not is_out_of_memory(error):
                    raise
                self._lower_batch(error)

    def _fresh_origin(self, index: int) -> int:
        """The nearest stored boundary at or before ``index`` that is not stale."""
        limit = index if self._stale_from is None else min(index, self._stale_from)
        return max(b for b in self._boundaries if b <= limit)

    def _row_nll(self, start: int, rows: range) -> torch.Tensor:
        """The per-row NLLs stay on the device until the end: one host sync in all."""
        origin = self._fresh_origin(start)
        nll = []
        with torch.inference_mode():
            for batch in self._batches(rows):
                hidden = self._boundaries[origin][batch]
                for index in range(origin, self.num_sub_blocks):
                    hidden = self._run_sub_block(index, hidden)
                nll.append(self._sequence_nll(hidden, batch))
        return torch.cat(nll).cpu()

    def _refresh(self, changed: int, interrupt: Callable[[], None] | None) -> None:
        """Rewrite every stored boundary after ``changed`` into its own preallocated tensor, batch
        by batch, so the cache never holds a second copy of itself."""
        wanted = [b for b in self._stored_indices() if b > changed]
        if not wanted:
            return
        origin = self._fresh_origin(changed)
        with torch.inference_mode():
            for batch in self._batches():
                if interrupt is not None:
                    interrupt()
                hidden = self._boundaries[origin][batch]
                for index in range(origin, wanted[-1]):
                    hidden = self._run_sub_block(index, hidden)
                    if index + 1 in wanted:
                        self._boundary_tensor(index + 1, hidden)[batch].copy_(hidden)

    def _stored_indices(self) -> range:
        return range(0, self.num_sub_blocks, self.cache_plan.stride)

    def _boundary_tensor(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """The storage of boundary ``index``, allocated once on the device that produces it."""
        boundary = self._boundaries.get(index)
        if boundary is None or boundary.device != like.device:
            boundary = like.new_empty((len(self.chunks), *like.shape[1:]))
            self._boundaries[index] = boundary
        return boundary

    def _lower_batch(self, error: BaseException) -> None:
        if self.batch_size == 1:
            raise OutOfMemory(
                "out of memory with batch size 1; lower ", setting("seqlen"), " or ",
                setting("nsamples"), ", or spread the model over more devices with ",
                setting("device_map"),
            ) from error  # fmt: skip
        self.batch_size = max(1, self.batch_size // 2)
        self._device_contexts.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._on_warning(f"out of memory while scoring; batch size lowered to {self.batch_size}")
