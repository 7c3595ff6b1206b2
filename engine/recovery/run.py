"""One recovery run: data, trainer, session folder and events, driven step by step.

Used the same way by the headless ``mptui recover`` and by the engine thread behind the app:
the caller passes ``poll``, called after every optimizer step (and blocking while paused), which
returns True to stop. A stop saves first, so nothing is lost; a kill loses the steps since the
last save, which a resume does again identically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..control import events as ev
from ..model.facts import ModelFacts, check_seqlen
from ..model.loading import load_config
from ..output.export import export_model
from ..session.disk import staged_folder
from . import events as rev
from .data import check_data, load_examples, split_validation
from .folder import RecoveryFolder
from .lora import merged_copy, resolve_targets
from .settings import RecoverySettings
from .source import RecoverySource
from .trainer import Trainer

log = logging.getLogger("mptui.engine")

Emit = Callable[[ev.Event], None]

#: Seconds between two reports of a validation's progress (an ``Activity`` of kind
#: ``validation``, held-out examples done of all; its start and end are always sent).
VALIDATION_PROGRESS_INTERVAL = 0.25


def check_recovery(settings: RecoverySettings, source: RecoverySource) -> None:
    """The cheap checks, before a model loads: something to recover, data that exists and has
    the needed fields, a seqlen the model can take, and targets it has."""
    source.read_plan()  # a plan that removed nothing has nothing to recover
    config = load_config(source.model_name())
    check_seqlen(settings.seqlen, ModelFacts.from_config(config))
    for data in filter(None, (settings.data, settings.val_data)):
        check_data(data)
    resolve_targets(skeleton(config), settings.targets)


def skeleton(config) -> nn.Module:
    """The model's modules without weights (on the meta device, instant even for a 7B): their
    names are the pruned model's, which narrows projections and never renames them. The
    family's own class: an export's config names mptui's class, which is remote code."""
    from accelerate import init_empty_weights
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    family = next(c for c in type(config).__mro__ if c in MODEL_FOR_CAUSAL_LM_MAPPING)
    with init_empty_weights():
        return MODEL_FOR_CAUSAL_LM_MAPPING[family](config)


def prepare_recovery(
    model: nn.Module,
    tokenizer,
    settings: RecoverySettings,
    folder: RecoveryFolder,
    emit: Emit,
    source: RecoverySource,
    cache_dir: Path | None = None,
) -> RecoveryRun:
    """Every check on the user's input, then the trainer, restored from the last save if any.

    Nothing is written to the folder until all checks passed; then ``settings`` and ``source``
    (where the pruned model comes from) are saved for a resume.
    """
    check_seqlen(settings.seqlen, ModelFacts.from_config(model.config))
    examples = load_examples(settings.data, tokenizer, settings.seqlen, cache_dir)
    if settings.val_data:
        train = examples
        val = load_examples(settings.val_data, tokenizer, settings.seqlen, cache_dir)
    else:
        train, val = split_validation(examples, settings.val_examples)
    state = folder.load()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(
        model, settings, train, val, pad_id=pad or 0, on_notice=lambda m: emit(ev.Notice(m))
    )
    if state is not None:
        trainer.load_state_dict(state)
    if not folder.started:
        folder.write_settings(settings, source)
    return RecoveryRun(trainer, tokenizer, folder, emit)


class RecoveryRun:
    def __init__(self, trainer: Trainer, tokenizer, folder: RecoveryFolder, emit: Emit) -> None:
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.folder = folder
        self.emit = emit
        self.settings = trainer.settings
        self.params = sum(
            p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n
        )

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def finished(self) -> bool:
        return self.trainer.step >= self.settings.steps

    def run(self, poll: Callable[[], bool] = lambda: False) -> str:
        """Train to the last step; returns ``done`` or ``stopped``."""
        trainer, settings = self.trainer, self.settings
        self.emit(
            rev.RecoveryStarted(
                trainer.step, settings.steps, trainer.trainable, self.params,
                len(trainer.train), len(trainer.val), settings.to_dict(), self._history(),
            )
        )  # fmt: skip
        if trainer.step == 0:
            self._validate()
            self._save()
        started, first = time.monotonic(), trainer.step
        tokens = 0
        while not self.finished:
            if poll():
                self._save()
                self.emit(rev.RecoveryFinished("stopped", trainer.step, settings.steps))
                return "stopped"
            result = trainer.train_step()
            tokens += result.tokens
            elapsed = max(time.monotonic() - started, 1e-9)
            done = trainer.step - first
            self.folder.log({"step": trainer.step, "loss": result.loss, "lr": result.lr})
            self.emit(
                rev.RecoveryStep(
                    trainer.step, settings.steps, result.loss, result.lr, tokens / elapsed,
                    elapsed / done * (settings.steps - trainer.step), trainer.micro_batch,
                    trainer.grad_accum,
                )
            )  # fmt: skip
            if trainer.step % settings.eval_every == 0 or self.finished:
                self._validate()
            if trainer.step % settings.save_every == 0 or self.finished:
                self._save()
        self.emit(rev.RecoveryFinished("done", trainer.step, settings.steps))
        return "done"

    def _history(self) -> tuple[dict, ...]:
        """The log up to the step resumed from; a step logged twice (done again after a kill)
        keeps its later line."""
        latest = {}
        for record in self.folder.read_log():
            if record["step"] <= self.trainer.step:
                latest[(record["step"], "loss" in record)] = record
        return tuple(latest[key] for key in sorted(latest))

    def _validate(self) -> None:
        """Validation perplexity, logged and sent; its progress is sent as it goes (the first
        validation runs before any optimizer step, with nothing else on the screen moving)."""
        step, last = self.trainer.step, None
        label = "validating the pruned model" if step == 0 else f"validating at step {step}"

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done in (0, total) or last is None or now - last >= VALIDATION_PROGRESS_INTERVAL:
                last = now
                self.emit(ev.Activity(ev.ActivityKind.VALIDATION, label, done, total))

        try:
            perplexity = self.trainer.validation_perplexity(progress)
        finally:
            self.emit(ev.Activity(None))
        self.folder.log({"step": self.trainer.step, "val_perplexity": perplexity})
        self.emit(rev.RecoveryValidated(self.trainer.step, perplexity))

    def _save(self) -> None:
        self.folder.save(self.trainer.state_dict())

    def merged(self) -> nn.Module:
        """The recovered model: adapters merged into a copy; training is untouched."""
        return merged_copy(self.trainer.model)

    def export(self, plan, path: Path, progress=None):
        """The recovered model (merged on a copy) as an export of ``plan``'s pruned model."""
        return export_model(
            self.merged(),
            self.tokenizer,
            plan,
            path,
            progress=progress,
            recovery=self.folder.card_info(),
        )

    def save_adapter(self, path: Path) -> None:
        """The unmerged peft adapter (``adapter_config.json`` + safetensors), whole or not at
        all (peft writes straight into the folder it is given)."""
        with staged_folder(path, f"the adapter {path.name!r} (none of it was kept)") as staging:
            self.trainer.model.save_pretrained(str(staging))
