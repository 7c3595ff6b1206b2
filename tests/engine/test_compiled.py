"""Compiled sub-block runners: the same numbers as eager, and eager when compiling fails."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from mptui.engine.model.adapters import adapter_for
from mptui.engine.model.compiled import SubBlockRunner, resolve_backend
from mptui.engine.search.scoring import Scorer


def no_compiler(graph, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_failing_compile_says_so_once_and_scores_eagerly(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    chunks = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    warnings: list[str] = []
    broken = Scorer(model, adapter_for(model), chunks, compile_backend=no_compiler,
                    on_warning=warnings.append)  # fmt: skip
    eager = Scorer(model, adapter_for(model), chunks)
    assert broken.score() == eager.score()
    assert broken.runner.backend is None
    assert len(warnings) == 1 and "scoring runs eagerly" in warnings[0]
    assert "no C++ compiler here" in warnings[0]


def test_auto_compiles_on_a_gpu_only():
    assert resolve_backend("auto", torch.device("cpu")) is None
    assert resolve_backend("auto", torch.device("cuda", 0)) == "inductor"
    assert resolve_backend("off", torch.device("cuda", 0)) is None
    assert resolve_backend("aot_eager", torch.device("cpu")) == "aot_eager"
    assert SubBlockRunner(None, print).backend is None
