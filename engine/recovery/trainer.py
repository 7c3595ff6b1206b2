"""The training loop of recovery: AdamW and transformers' linear warm-up schedule on the LoRA
parameters, one optimizer step at a time so that a caller can pause, stop or save between two.

A step takes the next ``batch_size * grad_accum`` examples of a seeded shuffle and runs them in
micro-batches; its loss is the mean token loss over all their label tokens, however they are
split, so lowering the micro-batch after an out-of-memory error changes nothing but speed.
Everything a resumed run needs to continue bit for bit (adapter, optimizer, scheduler, RNG, the
micro-batch in use) is in :meth:`Trainer.state_dict`.

A float16 model (Llama-2's checkpoints, loaded with ``--dtype auto`` on a GPU) is not trained as
it is: its gradients underflow. It trains in bfloat16 where the device supports it, else in
float16 with a gradient scaler; peft keeps the adapters themselves in float32 either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import OutOfMemory, setting
from ..model.memory import is_out_of_memory
from .data import IGNORE, Example
from .lora import add_adapters
from .settings import RecoverySettings

#: Gradient norm clip, as transformers' Trainer that the reference used.
MAX_GRAD_NORM = 1.0


def training_dtype(model_dtype: torch.dtype, bf16_supported: bool) -> tuple[torch.dtype, bool]:
    """The dtype the base model trains in, and whether the loss needs a gradient scaler."""
    if model_dtype != torch.float16:
        return model_dtype, False
    return (torch.bfloat16, False) if bf16_supported else (torch.float16, True)


def device_supports_bf16(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class StepResult:
    loss: float
    lr: float
    tokens: int


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        settings: RecoverySettings,
        train: Sequence[Example],
        val: Sequence[Example],
        *,
        pad_id: int = 0,
        on_notice: Callable[[str], None] = lambda message: None,
        bf16_supported: bool | None = None,
    ) -> None:
        """Adds adapters to ``model`` in place (seeded, so two runs start alike); a float16
        ``model`` is first cast to bfloat16 when ``bf16_supported`` (default: asks the device)."""
        from transformers import get_linear_schedule_with_warmup

        self.settings = settings
        self.train, self.val = list(train), list(val)
        self.pad_id = pad_id
        self.on_notice = on_notice
        torch.manual_seed(settings.seed)
        self.device = next(model.parameters()).device
        if bf16_supported is None:
            bf16_supported = device_supports_bf16(self.device)
        model_dtype = next(model.parameters()).dtype
        dtype, scaled = training_dtype(model_dtype, bf16_supported)
        if dtype != model_dtype:
            model.to(dtype)
            on_notice("the model is float16 (its gradients underflow): recovery trains in bfloat16")
        #: Loss scaling for float16 training where bfloat16 is not available (None otherwise).
        self.scaler = torch.amp.GradScaler(self.device.type) if scaled else None
        self.model = add_adapters(model, settings)
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            self.model.enable_input_require_grads()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.0)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(settings.warmup, settings.steps), settings.steps
        )
        self.step = 0
        self.micro_batch = settings.batch_size
        self._order_epoch: int | None = None
        self._order_cache: list[int] = []

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    # --- data ---------------------------------------------------------------------------------
    def step_examples(self, step: int) -> list[Example]:
        """The examples of optimizer step ``step`` (0-based): a fixed function of the seed, so
        a resumed run needs no data cursor. Each pass over the data has its own shuffle."""
        n, per_step = len(self.train), self.settings.effective_batch
        out = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, position = divmod(k, n)
            order = self._order(epoch)
            out.append(self.train[order[position]])
        return out

    def _order(self, epoch: int) -> list[int]:
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.settings.seed + epoch)
            self._order_cache = torch.randperm(len(self.train), generator=generator).tolist()
            self._order_epoch = epoch
        return self._order_cache

    def _collate(self, examples: Sequence[Example]) -> tuple[torch.Tensor, ...]:
        """Right-padded ids, attention mask and labels (IGNORE on padding)."""
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            ids[row, :length] = torch.tensor(example.input_ids)
            labels[row, :length] = torch.tensor(example.labels)
            mask[row, :length] = 1
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def _nll_sum(self, examples: Sequence[Example]) -> torch.Tensor:
        """Summed next-token loss over the label tokens, on float32 logits."""
        ids, mask, labels = self._collate(examples)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1),
            labels[:, 1:].flatten(),
            ignore_index=IGNORE,
            reduction="sum",
        )

    @staticmethod
    def _label_tokens(examples: Sequence[Example]) -> int:
        """Tokens that carry a loss (the first token of a row predicts nothing)."""
        return sum(sum(1 for label in e.labels[1:] if label != IGNORE) for e in examples)

    # --- training -------------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        """One optimizer step; on out-of-memory, halve the micro-batch and run the step again."""
        examples = self.step_examples(self.step)
        loss = self._with_oom_fallback(lambda: self._accumulate(examples))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = sum(len(e.input_ids) for e in examples)
        return StepResult(loss, lr, tokens)

    def _accumulate(self, examples: list[Example]) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = max(1, self._label_tokens(examples))
        loss_sum = 0.0
        for start in range(0, len(examples), self.micro_batch):
            nll = self._nll_sum(examples[start : start + self.micro_batch])
            loss = nll / total
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            loss_sum += nll.item()
        return loss_sum / total

    def _with_oom_fallback(self, work: Callable[[], float]) -> float:
        """``work()``, again with a halved micro-batch after each out-of-memory error."""
        while True:
            try:
                return work()
            except RuntimeError as error:  # torch's OutOfMemoryError and CUDA's other wordings
                if not is_out_of_memory(error):
                    raise
                self._lower_micro_batch()

    def _lower_micro_batch(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.micro_batch == 1:
            raise OutOfMemory(
                "out of memory with one example per forward; lower ",
                setting("recovery.seqlen"),
                " or turn on ",
                setting("recovery.gradient_checkpointing"),
            )
        self.micro_batch = max(1, self.micro_batch // 2)
        accum = math.ceil(self.settings.effective_batch / self.micro_batch)
        self.on_notice(
            f"out of memory: now {self.micro_batch} examples per forward and {accum} "
            "forwards per optimizer step (the effective batch is unchanged)"
        )

    @property
    def grad_accum(self) -> int:
        return math.ceil(self.settings.effective_batch / self.micro_batch)

    def validation_perplexity(self, progress: Callable[[int, int], None] | None = None) -> float:
        """``exp`` of the mean token loss over the held-out examples (dropout off).

        ``progress(done, total)`` is told how many held-out examples are scored: ``(0, total)``
        first, then after every micro-batch (again from 0 when an out-of-memory error lowered
        the micro-batch and the pass starts over)."""
        nll = self._with_oom_fallback(lambda: self._validation_nll(progress))
        return math.exp(nll / max(1, self._label_tokens(self.val)))

    @torch.no_grad()
    def _validation_nll(self, progress: Callable[[int, int], None] | None = None) -> float:
        self.model.eval()
        total = len(self.val)
        try:
            if progress is not None:
                progress(0, total)
            nll = 0.0
            for start in range(0, total, self.micro_batch):
                nll += self._nll_sum(self.val[start : start + self.micro_batch]).item()
                if progress is not None:
                    progress(min(start + self.micro_batch, total), total)
            return nll
        finally:
            self.model.train()

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        from peft import get_peft_model_state_dict

        state = {
            "step": self.step,
            "micro_batch": self.micro_batch,
            "adapter": {k: v.detach().cpu().clone() for k, v in
                        get_peft_model_state_dict(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }  # fmt: skip
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.micro_batch = state["micro_batch"]
