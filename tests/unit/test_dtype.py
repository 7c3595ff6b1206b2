"""``--dtype auto``: the checkpoint's precision on a GPU, float32 on the CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from mptui.engine.errors import BadInput
from mptui.engine.model.loading import checkpoint_dtype, resolve_dtype

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize(
    "device, checkpoint, bf16, expected",
    [
        ("cpu", BF16, True, F32),
        ("cpu", F16, True, F32),
        ("cuda", F16, True, F16),
        ("cuda", BF16, True, BF16),
        ("cuda:1", F32, True, BF16),
        ("cuda", None, True, BF16),
        ("cuda", F32, False, F32),
        ("cuda", BF16, False, BF16),
    ],
)
def test_auto_follows_the_checkpoint_on_a_gpu(device, checkpoint, bf16, expected):
    assert resolve_dtype("auto", device, checkpoint, lambda: bf16) == expected
    assert resolve_dtype(None, device, checkpoint, lambda: bf16) == expected


def test_an_explicit_dtype_wins_and_a_bad_one_is_one_line():
    assert resolve_dtype("float16", "cpu", BF16) == F16
    with pytest.raises(BadInput, match=r"^dtype 'half8' must be one of auto"):
        resolve_dtype("half8", "cuda", BF16)


def test_the_checkpoint_dtype_is_read_from_its_config(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("llama"))
    assert checkpoint_dtype(config) == F32  # the tiny models are saved in float32
    config.dtype = "bfloat16"
    assert checkpoint_dtype(config) == BF16
