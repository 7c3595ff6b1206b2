"""Labels: GPUs matched between NVML and torch by UUID, and the model's own name everywhere."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from mptui.app.gpu import NvmlReader
from mptui.app.panes import gpu_text
from mptui.app.state import display_name
from mptui.engine.names import model_label, model_source
from mptui.engine.output.export import model_card
from mptui.engine.session.summary import markdown, summarize

GIB = 1024**3


class FakeNvml:
    """What the memory pane uses of ``pynvml``, for three GPUs that differ in every number."""

    def __init__(self) -> None:
        self.devices = [
            {"uuid": f"GPU-{n}{n}{n}{n}aaaa-0000-1111-2222-33334444555{n}", "name": f"Card {n}",
             "used": (n + 1) * GIB, "total": 80 * GIB}
            for n in range(3)
        ]  # fmt: skip

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()  # older pynvml answers bytes

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(used=handle["used"], total=handle["total"])


def torch_as_launched(nvml: FakeNvml):
    """torch's device UUIDs under ``CUDA_VISIBLE_DEVICES``, as ``get_device_properties(i).uuid``
    prints them: in the variable's order, without NVML's ``GPU-`` prefix."""

    def uuids() -> list[str]:
        visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
        return [nvml.devices[int(n)]["uuid"].removeprefix("GPU-") for n in visible]

    return uuids


def test_torch_device_0_gets_the_numbers_of_the_gpu_it_really_is(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    nvml = FakeNvml()
    reader = NvmlReader(nvml=nvml, torch_uuids=torch_as_launched(nvml))
    by_torch = {gpu.torch_index: gpu for gpu in reader.read()}
    assert by_torch[0].index == 2 and by_torch[0].used == 3 * GIB and by_torch[0].name == "Card 2"
    assert by_torch[1].index == 0 and by_torch[1].used == 1 * GIB
    assert by_torch[None].index == 1  # GPU 1 is not this run's
    text, shown = gpu_text(reader.read(), {0: (5 * GIB, 6 * GIB), 1: (0, 0)})
    assert [gpu.index for gpu in shown] == [2, 0]
    first = text.plain.splitlines()[:3]
    assert first == [
        "cuda:0 (GPU2) Card 2",
        " used 3.0 GiB / 80.0 GiB",
        " torch 5.0 GiB alloc, 6.0 GiB reserved",
    ]
    assert "GPU1" not in text.plain


def test_before_torch_answers_every_nvml_gpu_shows_by_its_own_number():
    nvml = FakeNvml()
    asked = []
    reader = NvmlReader(nvml=nvml, torch_uuids=lambda: asked.append(1))  # None: not yet
    text, shown = gpu_text(reader.read(), {})
    assert [gpu.index for gpu in shown] == [0, 1, 2] and text.plain.startswith("GPU0 Card 0\n")
    assert len(asked) == 1
    reader.read()
    assert len(asked) == 2  # asked again until torch has initialised CUDA


def test_no_nvml_means_no_gpu():
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("NVML Shared Library Not Found")

    assert NvmlReader(nvml=Broken()).read() == []


@pytest.mark.parametrize(
    ("given", "shown"),
    [("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"), ("gpt2", "gpt2"),
     ("/srv/models/llama-7b/", "llama-7b"), ("./demo/model", "demo"), ("~/m/qwen", "qwen"),
     ("/srv/llama-7b/hf/model", "llama-7b"), (f"/srv/ckpt/{'0a' * 20}", "srv"),
     ("/root/.cache/huggingface/hub/models--Qwen--Qwen3-0.6B/snapshots/" + "ab" * 20,
      "Qwen/Qwen3-0.6B")],
)  # fmt: skip
def test_a_model_is_named_by_its_own_name_never_model(given, shown):
    assert model_label(given) == shown
    assert display_name(given) == shown  # the status line's


def test_a_folder_called_model_takes_the_hub_id_its_config_recorded(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": str(folder)}))
    assert model_label(str(folder)) == tmp_path.name  # its own path says nothing: the parent
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen3-0.6B"}))
    assert model_label(str(folder)) == "Qwen/Qwen3-0.6B"
    config = SimpleNamespace(_name_or_path="mistralai/Mistral-7B-v0.1")
    assert model_label(str(folder), config) == "mistralai/Mistral-7B-v0.1"


def test_summaries_and_model_cards_never_show_a_local_path(tmp_path):
    base = tmp_path / "zoo" / "demo" / "model"
    plan = {
        "format": "mptui.plan/1",
        "model": {"name_or_path": str(base), "params_dense": 1000, "num_layers": 1,
                  "mlp_width": 8, "attn_width": 8},
        "settings": {}, "dense_score": 10.0, "steps": [],
    }  # fmt: skip
    summary = summarize(plan)
    card = model_card(plan, stock=True, dtype=torch.float16)
    for text in (json.dumps(summary), markdown(summary), card):
        assert str(tmp_path) not in text and "a local checkpoint (demo)" in text
    assert "base_model: local" in card
    hub = {**plan, "model": {**plan["model"], "name_or_path": "Qwen/Qwen3-0.6B"}}
    assert "Pruned from Qwen/Qwen3-0.6B by mptui" in model_card(hub, True, torch.float16)
    assert model_source("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
