"""GPU code paths checked on the CPU, where the CPU can stand in: compiles across width changes,
CUDA's other ways of saying "out of memory", and where loading puts the weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.gpu_check import DRY_RUN, MODES, build_model, build_pruning
from mptui.engine.model import loading
from mptui.engine.model.adapters import adapter_for
from mptui.engine.model.memory import is_out_of_memory
from mptui.engine.search.calibration import CalibrationSpec, load_calibration
from mptui.engine.search.scoring import Scorer

EIGHT_LAYERS = replace(DRY_RUN, shape={**DRY_RUN.shape, "num_hidden_layers": 8})


def commit_best(pruning, dimension: str) -> None:
    candidates = pruning.eligible(dimension)
    scores = [pruning.score_candidate(candidate) for candidate in candidates]
    best = min(range(len(scores)), key=scores.__getitem__)
    pruning.commit(candidates[best], scores[best], "engine")


def test_width_changes_do_not_recompile_the_sub_blocks():
    """Twelve MLP-width and six head commits, each step's trials on narrowed views: the compiled
    runners stop compiling once the widths are dynamic, and never fall back to eager (before,
    every width compiled again until dynamo's limit of 8 and then ran eagerly, silently)."""
    counter = CompileCounter()
    warnings: list[str] = []
    profile = replace(EIGHT_LAYERS, compile_backend=counter)
    pruning = build_pruning(profile, MODES[0], build_model(profile))  # cached and compiled
    pruning.scorers["mlp_channels"]._on_warning = warnings.append
    compiles = []
    for step in range(12):
        commit_best(pruning, "mlp_channels")
        if step < 6:
            commit_best(pruning, "attn_heads")
        compiles.append(counter.frame_count)
    runner = pruning.scorers["mlp_channels"].runner
    assert runner.backend is counter, warnings  # still compiled: no fallback to eager
    assert compiles[1] == compiles[-1], compiles  # no compile after the second commit
    assert compiles[-1] <= 8  # a static and a dynamic graph per function, and the last batch
    assert warnings == []


@pytest.fixture
def tiny_scorer_parts(tiny_model_dir, calibration_file):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chunks = load_calibration(
        CalibrationSpec(str(calibration_file), 0, 32), AutoTokenizer.from_pretrained(path)
    )
    return model, chunks


ALLOCATION_FAILURES = [
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("CUDA error: out of memory"),
]


def scorer_failing_above(model, chunks, limit: dict, failure: Exception, backend: str | None):
    """A scorer whose layer-1 MLP raises ``failure`` on batches above ``limit["batch"]``: in the
    eager forward, or out of the compiled call (where an allocation inside the compiled graph or
    its compile would surface)."""
    warnings: list[str] = []
    scorer = Scorer(
        model, adapter_for(model), chunks, 8, compile_backend=backend,
        on_warning=warnings.append,
    )  # fmt: skip
    if backend is None:

        def fail_on_big_batches(_module, args):
            if args[0].shape[0] > limit["batch"]:
                raise failure

        model.model.layers[1].mlp.register_forward_pre_hook(fail_on_big_batches)
    else:
        compiled = scorer.runner._mlp

        def compiled_failing_on_big_batches(block, norm, hidden):
            if block is model.model.layers[1].mlp and hidden.shape[0] > limit["batch"]:
                raise failure
            return compiled(block, norm, hidden)

        scorer.runner._mlp = compiled_failing_on_big_batches
    return scorer, warnings


@pytest.mark.parametrize("failure", ALLOCATION_FAILURES)
@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_cuda_allocation_failures_lower_the_batch_like_an_out_of_memory(
    tiny_scorer_parts, failure, backend
):
    """cuBLAS failing to allocate, or the runtime's own wording, in an eager forward or a
    compiled sub-block: the batch is lowered and the score is unchanged; compiling stays on."""
    model, chunks = tiny_scorer_parts
    limit = {"batch": 8}
    scorer, warnings = scorer_failing_above(model, chunks, limit, failure, backend)
    expected = scorer.score()
    limit["batch"] = 2
    assert scorer.score() == pytest.approx(expected, rel=1e-6)
    assert scorer.batch_size == 2
    assert warnings == [f"out of memory while scoring; batch size lowered to {n}" for n in (4, 2)]
    assert scorer.runner.backend == backend


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only runtime errors


def test_loading_puts_the_weights_on_the_device_directly(tiny_model_dir, monkeypatch):
    """No load on the CPU first and a copy after: from_pretrained gets the device as its map."""
    from transformers import AutoModelForCausalLM as Auto

    seen = {}
    real = Auto.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Auto, "from_pretrained", classmethod(spy))
    model, _ = loading.load_model(str(tiny_model_dir("llama")), device="cpu")
    assert seen["device_map"] == "cpu"
    assert next(model.parameters()).device.type == "cpu"
    seen.clear()
    loading.load_model(str(tiny_model_dir("llama")), device="cpu", device_map="auto")
    assert seen["device_map"] == "auto"


def test_a_broadcast_carries_its_tensors_from_host_memory():
    """What the leader broadcasts (calibration rows, channel orders) keeps its shape and has every
    tensor on the CPU, so a worker pinned to other GPUs can unpickle it."""
    from mptui.engine.workers.team import on_host

    orders = {"mlp": torch.arange(4), "attn": torch.arange(2)}
    value = ({"blocks": torch.ones(2, 3)}, [orders, None], "text")
    moved = on_host(value)
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[2] == "text"
    assert torch.equal(moved[1][0]["mlp"], orders["mlp"]) and moved[1][1] is None
    tensors = [moved[0]["blocks"], *moved[1][0].values()]
    assert all(t.device.type == "cpu" for t in tensors)


@pytest.mark.parametrize("bf16_supported", [True, False])
def test_a_float16_model_recovers_in_bfloat16_or_with_a_gradient_scaler(
    tiny_model_dir, bf16_supported
):
    """Llama-2 loads as float16 on a GPU; training it as it is underflows. Where bfloat16 runs,
    the base is cast to it; elsewhere the loss is scaled (its state saved for a resume). Either
    way the adapters train: finite losses and adapter weights that moved."""
    from mptui.engine.recovery.data import Example
    from mptui.engine.recovery.settings import RecoverySettings
    from mptui.engine.recovery.trainer import Trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float16)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 500, (24,), generator=generator).tolist() for _ in range(6)]
    examples = [Example(tuple(row), tuple(row)) for row in rows]
    settings = RecoverySettings(
        data="unused", steps=3, batch_size=2, grad_accum=1, seqlen=32, warmup=1, lr=1e-2
    )
    notices: list[str] = []
    trainer = Trainer(
        model, settings, examples[:4], examples[4:], on_notice=notices.append,
        bf16_supported=bf16_supported,
    )  # fmt: skip
    base = next(p for n, p in trainer.model.named_parameters() if "q_proj.base_layer" in n)
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(p.dtype == torch.float32 for p in lora.values())  # peft keeps adapters in fp32
    losses = [trainer.train_step().loss for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved, "the adapters did not train"
    if bf16_supported:
        assert base.dtype == torch.bfloat16 and trainer.scaler is None
        assert notices == [
            "the model is float16 (its gradients underflow): recovery trains in bfloat16"
        ]
    else:
        assert base.dtype == torch.float16 and trainer.scaler is not None
        assert "scaler" in trainer.state_dict() and notices == []
