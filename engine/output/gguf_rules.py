"""What a GGUF export accepts, checked before any model loads (torch-free, so the CLI refuses
bad input at once)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput, Message, UnsupportedModel, setting

#: ``--gguf-type`` choices; 1-D tensors (norms, biases) are always written in float32.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
#: Families whose layers llama.cpp's ``deci`` graph computes exactly (model types).
GGUF_FAMILIES = ("llama", "mistral", "qwen2", "phi3")
#: How a GGUF export's refusals begin (``--format gguf``).
FORMAT_GGUF = Message.of(setting("format"), " gguf")
#: Why the other families cannot be written, for the one-line refusal.
_REFUSED_BECAUSE = {
    "qwen3": "its per-head q/k norms have no place in llama.cpp's deci layers",
    "gpt2": "its LayerNorm, GELU MLP and learned positions are not llama.cpp's deci layers",
}
_ARCHITECTURE_FAMILY = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
    "Qwen3ForCausalLM": "qwen3",
    "GPT2LMHeadModel": "gpt2",
}


def refusal_for(family: str) -> Message | None:
    """One line saying why ``family`` (a model type) cannot be exported as GGUF, or None."""
    if family in GGUF_FAMILIES:
        return None
    why = _REFUSED_BECAUSE.get(family, "llama.cpp's deci layers do not describe it")
    return Message.of(
        FORMAT_GGUF,
        f": a {family} model cannot be written as GGUF ({why}); GGUF export supports "
        f"{', '.join(GGUF_FAMILIES)}, and every family exports as safetensors (",
        setting("format"),
        " safetensors)",
    )


def check_gguf_architecture(architecture: str) -> None:
    """Refuse an unsupported family from the plan's architecture name, before any model loads."""
    family = _ARCHITECTURE_FAMILY.get(architecture)
    if family is not None and (why := refusal_for(family)):
        raise UnsupportedModel(why)


def check_gguf_destination(out: Path) -> None:
    """``out`` must name a ``.gguf`` file in an existing folder, and may replace only a GGUF."""
    if out.suffix.lower() != ".gguf":
        raise BadInput(
            FORMAT_GGUF, " writes one file: give ", setting("export.path"),
            f" a name ending in .gguf ({out})",
        )  # fmt: skip
    if out.is_dir():
        raise BadInput(f"GGUF destination '{out}' is a folder; give a file name ending in .gguf")
    if not out.parent.is_dir():
        raise BadInput(f"GGUF destination folder '{out.parent}' does not exist")
    if out.exists() and not _is_gguf(out):
        raise BadInput(f"GGUF destination '{out}' exists and is not a GGUF file; choose a new name")


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"GGUF"


__all__ = [
    "GGUF_FAMILIES",
    "GGUF_TYPES",
    "check_gguf_architecture",
    "check_gguf_destination",
    "refusal_for",
]
