"""Loading a model and its tokenizer the way transformers does, with errors a user can act on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import BadInput, UnsupportedModel
from .pruned_modeling import MptuiPrunedConfig, family_model_types

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def looks_like_path(name: str) -> bool:
    """A hub id is ``owner/name``; anything else with a separator or a dot prefix is a path."""
    if os.path.exists(name):
        return True
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU and float32 on the CPU (half precision is slow there)."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise BadInput(f"--dtype '{dtype}' must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_mptui_export(name_or_path: str) -> bool:
    """A local folder written by ``mptui export`` that needs its carried modeling code.

    The folder's code then runs as ``trust_remote_code=True`` would run it, because the user
    named this folder; a hub model that asks for remote code is refused by transformers as usual.
    """
    config = Path(name_or_path).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == MptuiPrunedConfig.model_type
    except (OSError, ValueError):
        return False


def load_config(name_or_path: str):
    from transformers import AutoConfig

    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise BadInput(f"model path '{name_or_path}' does not exist")
    try:
        return AutoConfig.from_pretrained(
            os.path.expanduser(name_or_path), trust_remote_code=is_mptui_export(name_or_path)
        )
    except (OSError, ValueError) as error:
        raise BadInput(
            f"could not load model '{name_or_path}': it is not a local model folder and not in "
            f"the Hugging Face cache, or the hub is unreachable ({_first_line(error)})"
        ) from error


def check_supported(config) -> None:
    """One clear error, naming the supported architectures, before any weight is read."""
    from .adapters import supported_model_types

    supported = supported_model_types()
    if not set(family_model_types(config)) & set(supported):
        raise UnsupportedModel(
            f"architecture '{config.model_type}' is not supported; "
            f"supported: {', '.join(supported)}"
        )


def load_model(
    name_or_path: str,
    *,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
):
    """Return ``(model, tokenizer)`` in eval mode with gradients off and SDPA attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_supported(load_config(name_or_path))
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device} asked for a GPU but torch sees none")
    torch_dtype = resolve_dtype(dtype, device)
    path = os.path.expanduser(name_or_path)
    carried_code = is_mptui_export(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation="sdpa",
            trust_remote_code=carried_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=carried_code)
    except torch.OutOfMemoryError as error:
        raise BadInput(
            "out of memory while loading the model; use --device-map auto or a smaller --dtype"
        ) from error
    except OSError as error:
        raise BadInput(f"could not load model '{name_or_path}': {_first_line(error)}") from error
    if device_map is None:
        model.to(device)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise BadInput("the device map offloads weights to disk; give it enough GPU/CPU memory")
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def max_positions(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
