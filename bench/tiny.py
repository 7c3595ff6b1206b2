"""Tiny seeded models with real tokenizers, on disk, for tests and benchmarks (kept out of the
installed package: no user of mptui needs them).

Every supported family gets a model small enough to build in a fraction of a second, with
grouped-query attention where the family has it, an MLP width that no usual group size divides,
and weights perturbed so that different blocks matter differently (a default-initialised model
scores every candidate alike, which would make plan comparisons meaningless). Nothing is
downloaded: the tokenizer is a byte-level BPE trained here on text every Python carries.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mptui.demo.tokenizer import train_byte_level_bpe

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2")

HIDDEN = 64
INTERMEDIATE = 176
HEADS = 8
KV_HEADS = 4


@functools.cache
def _pydoc_paragraphs() -> tuple[str, ...]:
    """Paragraphs of ``pydoc_data.topics``: fixed per Python version, offline, a few hundred KB."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            block = " ".join(block.split())
            if len(block) > 40:
                paragraphs.append(block)
    return tuple(paragraphs)


def tiny_text(n_docs: int = 200, seed: int = 0) -> list[str]:
    """Deterministic documents (paragraphs of Python's own topic help) for calibration."""
    paragraphs = list(_pydoc_paragraphs())
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:n_docs]


@functools.cache
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab_size`` tokens, trained once per process.

    Trained rather than shipped so that no file or download is needed; a few hundred
    paragraphs are enough, and the cache makes every later call free.
    """
    return train_byte_level_bpe(vocab_size, texts=_pydoc_paragraphs()[:400])


def family_config(
    family: str, num_layers: int, vocab_size: int, overrides: dict[str, Any]
) -> PretrainedConfig:
    """The family's own config class with tiny dimensions; ``overrides`` win over them."""
    import transformers as tf

    common = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": num_layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 256,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": None,
        "tie_word_embeddings": False,
    }
    if family == "gpt2":
        gpt2 = {
            "vocab_size": vocab_size,
            "n_embd": HIDDEN,
            "n_inner": INTERMEDIATE,
            "n_layer": num_layers,
            "n_head": 4,
            "n_positions": 256,
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
        return tf.GPT2Config(**(gpt2 | overrides))
    classes = {
        "llama": tf.LlamaConfig,
        "mistral": tf.MistralConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "phi3": tf.Phi3Config,
    }
    if family not in classes:
        raise ValueError(f"unknown family '{family}'; use one of {', '.join(FAMILIES)}")
    # Qwen3 takes head_dim from its config (default 128), not hidden / heads: make them differ.
    extra = {"head_dim": 16} if family == "qwen3" else {}
    return classes[family](**(common | extra | overrides))


def build_tiny_model(
    family: str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    num_layers: int = 4,
    vocab_size: int = 512,
    **config_overrides,
) -> Path:
    """Build, perturb and save a tiny ``family`` model plus tokenizer into ``path``.

    The same ``seed`` always gives the same weights. Returns ``path`` as a :class:`Path`,
    ready for ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    config = family_config(family, num_layers, vocab_size, config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_norm = "norm" in name or "ln_" in name
            if is_norm and name.endswith(".weight"):
                parameter.copy_(1.0 + 0.3 * noise)  # uneven norms make blocks matter unevenly
            else:
                parameter.copy_(0.08 * noise)
    path = Path(path)
    model.eval().save_pretrained(path)
    tiny_tokenizer(vocab_size).save_pretrained(path)
    return path
