"""From a run request to a ready ``Pruning``: load, check, rank, tokenize, score dense.

Kept apart from the runner so the headless CLI, the app and resume share one path, and so every
check on user input happens before any long work starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..control import events as ev
from ..errors import BadInput, Message, setting
from ..model.adapters import Adapter, adapter_for
from ..model.channel_order import apply_order, reorder_model
from ..model.compiled import resolve_backend
from ..model.facts import ModelFacts, check_seqlen, check_supported
from ..model.loading import check_device, load_config, load_model
from ..names import model_label
from ..workers.team import Team
from .calibration import faithful_rows, load_calibration, load_documents, tokenize_chunks
from .fast_search import spread_rows
from .methods import method_named
from .pruning import Pruning
from .run_request import RunRequest
from .scoring import Scorer
from .settings import CalibrationSpec, resolve_group_sizes

log = logging.getLogger("mptui.engine")

#: Rows the reference draws in faithful mode (docs/method.md §9): width rows first, then block rows.
FAITHFUL_WIDTH_ROWS = 128
FAITHFUL_BLOCK_ROWS = 256

#: Why a run without calibration text cannot start.
NO_CALIBRATION = Message.of("no calibration text given; pass ", setting("calibration"), " PATH")


def faithful_dtype(faithful: str | None, dtype: str | None) -> str | None:
    """The reference's precision in faithful mode (docs/method.md §9), else the user's."""
    return method_named(faithful).faithful_dtype if faithful else dtype


def preflight(request: RunRequest) -> None:
    """The cheap checks, before anything long starts: model config and architecture, seqlen
    against the model's limit, a device torch has, and a calibration source that exists and
    has text."""
    check_device(request.device)
    facts = ModelFacts.from_config(load_config(request.model))
    check_supported(facts)
    check_seqlen(request.settings.calibration.seqlen, facts)
    spec = request.settings.calibration
    if not spec.source:
        raise BadInput(NO_CALIBRATION)
    load_documents(spec.source, spec.text_field)  # a dataset name: reachable, or one clear line


def build_pruning(
    request: RunRequest,
    emit: Callable[[ev.Event], None],
    loaded: tuple | None = None,
    interrupt: Callable[[], None] | None = None,
    team: Team | None = None,
) -> Pruning:
    """Load (or take ``loaded``: a model and tokenizer already in memory, as benchmarks do with
    big random models), check, rank, tokenize, score the dense model and replay a resume.

    ``interrupt`` is called between the pieces of every long phase (shards, layers, batches,
    replayed steps) and may raise to abandon the build: a Stop must not wait for minutes.
    In a multi-worker run (``team``) every worker builds its own replica, and the leader's
    calibration tokens and channel order are broadcast, so the replicas are equal.
    """
    leads = team is None or team.is_leader
    settings = request.settings
    check = interrupt or (lambda: None)
    label = f"loading {model_label(request.model)}"

    def on_shard(done: int, total: int) -> None:
        check()
        emit(ev.Activity(ev.ActivityKind.LOADING, label, done, total))

    model, tokenizer = loaded or load_model(
        request.model,
        dtype=faithful_dtype(settings.faithful, request.dtype),
        device=request.device,
        device_map=request.device_map,
        on_shard=on_shard,
    )
    emit(ev.Activity(None))
    check()
    adapter = adapter_for(model)
    check_seqlen(settings.calibration.seqlen, ModelFacts.from_config(model.config))
    chunks_by_dimension = _calibration(request, tokenizer) if leads else None
    orders = None
    if leads:
        orders = reorder_model(
            adapter, request.order_file, save_to=request.order_file, interrupt=check
        )
    if team is not None:
        chunks_by_dimension, orders = team.broadcast((chunks_by_dimension, orders))
        if not leads:
            apply_order(adapter, orders)
    check()
    groups = resolve_group_sizes(
        request.model,
        adapter.dense_mlp_width,
        adapter.attn_group_channels,
        settings.mlp_group,
        settings.attn_group,
    )
    notes = method_named(settings.method).notes(
        group_source=groups.source,
        attn_group=groups.attn,
        attn_width=adapter.dense_kv_groups * adapter.attn_group_channels,
        fast=settings.fast,
    )
    for note in notes:
        emit(ev.Notice.of(note))
    ignore = faithful_label_mask(settings.faithful, tokenizer, model.config)
    scorers = _scorers(model, adapter, chunks_by_dimension, request, emit, ignore, check)
    pruning = Pruning(
        model=model,
        adapter=adapter,
        settings=settings,
        groups=groups,
        scorers=scorers,
        name_or_path=request.model,
        tokenizer=tokenizer,
        count_removed_norms=bool(
            settings.faithful and method_named(settings.faithful).faithful_counts_norms
        ),
    )
    pruning.replay(list(request.resume_steps), interrupt=check)
    emit(
        ev.Loaded(
            model=request.model,
            architecture=type(model).__name__,
            num_layers=adapter.num_layers,
            params_dense=pruning.params_dense,
            params_layers_dense=pruning.params_layers_dense,
            dense_score=pruning.dense_scores[settings.order[0]],
            mlp_group=groups.mlp,
            attn_group=groups.attn,
            group_source=str(groups.source),
            mlp_width=adapter.dense_mlp_width,
            attn_width=adapter.dense_kv_groups * adapter.attn_group_channels,
            order=settings.order,
            targets=settings.targets(),
            tokens=next(iter(scorers.values())).tokens,
            notes=tuple(map(str, notes)),
            steps=tuple(pruning.steps),
            method=settings.method,
        )
    )
    return pruning


def _calibration(request: RunRequest, tokenizer) -> dict[str, torch.Tensor]:
    """Token chunks per dimension: one set, or the reference's two in faithful multipruner.
    The fast search (never faithful) gets the set in a seeded random order."""
    settings = request.settings
    spec: CalibrationSpec = settings.calibration
    if not spec.source:
        raise BadInput(NO_CALIBRATION)
    if settings.faithful is None:
        chunks = load_calibration(spec, tokenizer, request.cache_dir)
        if settings.fast:  # its first rounds' rows: a sample of the set, not its first documents
            chunks = spread_rows(chunks, spec.seed)
        return dict.fromkeys(("blocks", "mlp_channels", "attn_heads"), chunks)
    if method_named(settings.faithful).faithful_width_rows:
        width_rows, block_rows = faithful_rows(
            spec.source, spec.text_field, [FAITHFUL_WIDTH_ROWS, FAITHFUL_BLOCK_ROWS]
        )
        blocks = tokenize_chunks(tokenizer, block_rows, spec.seqlen, request.cache_dir)
        width = tokenize_chunks(tokenizer, width_rows, spec.seqlen, request.cache_dir)
        return {"blocks": blocks, "mlp_channels": width, "attn_heads": width}
    (block_rows,) = faithful_rows(spec.source, spec.text_field, [FAITHFUL_BLOCK_ROWS])
    chunks = tokenize_chunks(tokenizer, block_rows, spec.seqlen, request.cache_dir)
    return dict.fromkeys(("blocks", "mlp_channels", "attn_heads"), chunks)


def faithful_label_mask(faithful: str | None, tokenizer, config) -> int | None:
    """The label id the reference ignored: EOS (multipruner) or pad (blockpruner); 0 or none
    masks nothing, as in the reference's test."""
    return method_named(faithful).faithful_label_id(tokenizer, config) if faithful else None


def _scorers(
    model, adapter: Adapter, chunks_by_dimension, request: RunRequest, emit, ignore, interrupt
):
    """One scorer per distinct calibration set, shared by the dimensions that use it."""
    settings = request.settings
    by_tensor: dict[int, Scorer] = {}
    out = {}
    for dimension, chunks in chunks_by_dimension.items():
        if id(chunks) not in by_tensor:
            by_tensor[id(chunks)] = Scorer(
                model,
                adapter,
                chunks,
                settings.batch_size,
                prefix_cache=settings.prefix_cache,
                compile_backend=resolve_backend(
                    settings.compile, model.get_input_embeddings().weight.device
                ),
                cache_budget_bytes=request.cache_budget_bytes,
                ignore_label_id=ignore,
                on_warning=lambda message: emit(ev.Notice(message)),
                interrupt=interrupt,
            )
        out[dimension] = by_tensor[id(chunks)]
    return out
