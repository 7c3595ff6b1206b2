"""A transformers tokenizer as llama.cpp's GGUF vocabulary (the ``tokenizer.ggml.*`` keys).

Two kinds are written, read from the tokenizer's own ``tokenizer.json`` so that no file beyond
what ``save_pretrained`` writes is needed:

- **SentencePiece BPE** (Llama-2, Mistral): llama.cpp's ``llama`` vocabulary. llama.cpp merges
  the adjacent pair whose concatenation has the highest *score*; transformers merges the pair
  of lowest *rank* in its merge list. The two agree when each token's score is minus the rank
  of the first merge that makes it, which is how the scores are derived here (transformers
  builds that list from the SentencePiece scores, so the order is the original one).
- **Byte-level BPE** (Qwen2, Llama-3, GPT-2-style): llama.cpp's ``gpt2`` vocabulary with its
  merges and the name of a pre-tokenizer llama.cpp implements, recognised from the regular
  expression the tokenizer splits text with. An unknown one is refused: llama.cpp would fall
  back to a default split and tokenize differently, silently.

Special tokens, whether BOS/EOS are added, and the chat template come along.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModel

#: GGUF token types (llama.cpp's ``llama_token_type``); the gguf package's enum has the same
#: values, kept here so that this module reads without it.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: The split expressions of byte-level tokenizers whose pre-tokenizer llama.cpp implements,
#: as transformers' tokenizer.json writes them, and llama.cpp's name for each.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_SPLITS = {
    GPT2_SPLIT: "gpt-2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GgufVocab:
    """Everything the GGUF file says about the tokenizer, as plain values."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None

    def write(self, writer: Any) -> None:
        """Add the ``tokenizer.ggml.*`` keys to a ``gguf.GGUFWriter``."""
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.model == "llama":
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def gguf_vocab(tokenizer: Any, vocab_size: int) -> GgufVocab:
    """The vocabulary of a transformers fast tokenizer, padded to the model's ``vocab_size``
    rows of embeddings (as llama.cpp's converter pads, with unused tokens)."""
    spec = _tokenizer_json(tokenizer)
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UnsupportedModel(
            f"GGUF export: a {model.get('type')} tokenizer is not supported "
            "(SentencePiece BPE and byte-level BPE are)"
        )
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    if model.get("byte_fallback"):
        vocab = _sentencepiece_vocab(model, added, tokenizer)
    else:
        vocab = _byte_level_vocab(spec, model, added)
    if len(vocab.tokens) > vocab_size:
        raise UnsupportedModel(
            f"GGUF export: the tokenizer has {len(vocab.tokens)} tokens but the model only "
            f"{vocab_size} embedding rows"
        )
    for index in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{index}]")
        vocab.scores.append(-1000.0)
        vocab.types.append(UNUSED)
    vocab.special_ids = _special_ids(tokenizer)
    vocab.add_bos, vocab.add_eos = _added_specials(tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


def _tokenizer_json(tokenizer: Any) -> dict:
    """The tokenizer's ``tokenizer.json`` as transformers itself would save it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return json.loads(backend.to_str())
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise UnsupportedModel(
                "GGUF export needs a fast tokenizer (tokenizer.json); this one has none"
            )
        return json.loads(path.read_text())


def _ordered_vocab(model: dict, added: dict[int, dict]) -> list[str]:
    """Token strings by id: the model's vocabulary, then added tokens beyond it."""
    by_id = {index: token for token, index in model["vocab"].items()}
    by_id.update({index: token["content"] for index, token in added.items()})
    size = max(by_id) + 1
    missing = [index for index in range(size) if index not in by_id]
    if missing:
        raise UnsupportedModel(
            f"GGUF export: the tokenizer has no token for id {missing[0]} (ids must be dense)"
        )
    return [by_id[index] for index in range(size)]


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _type_of(index: int, added: dict[int, dict]) -> int:
    if index in added:
        return CONTROL if added[index].get("special") else USER_DEFINED
    return NORMAL


def _sentencepiece_vocab(model: dict, added: dict[int, dict], tokenizer: Any) -> GgufVocab:
    tokens = _ordered_vocab(model, added)
    rank_of: dict[str, int] = {}
    for rank, (left, right) in enumerate(_merge_pairs(model)):
        rank_of.setdefault(left + right, rank)
    unknown = model.get("unk_token")
    scores, types = [], []
    for index, token in enumerate(tokens):
        scores.append(-float(rank_of[token]) if token in rank_of else 0.0)
        if token == unknown:
            types.append(UNKNOWN)
        elif _BYTE_PIECE.fullmatch(token) and index not in added:
            types.append(BYTE)
        else:
            types.append(_type_of(index, added))
    return GgufVocab("llama", tokens, scores, types, add_space_prefix=_prepends_space(tokenizer))


def _prepends_space(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a word boundary (▁) before the first word, as SentencePiece's
    dummy prefix does: told by tokenizing a word with and without a leading space."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" a", add_special_tokens=False)["input_ids"]
    return plain == spaced


def _byte_level_vocab(spec: dict, model: dict, added: dict[int, dict]) -> GgufVocab:
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UnsupportedModel(
            "GGUF export: a BPE tokenizer without byte fallback must be byte-level"
        )
    tokens = _ordered_vocab(model, added)
    types = [_type_of(index, added) for index in range(len(tokens))]
    merges = [f"{left} {right}" for left, right in _merge_pairs(model)]
    return GgufVocab("gpt2", tokens, [0.0] * len(tokens), types, merges, pre=_pre_tokenizer(spec))


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or one line saying it has none."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    splits = []
    for part in parts:
        if part.get("type") == "ByteLevel" and part.get("use_regex", True):
            if part.get("add_prefix_space"):
                break
            splits.append(GPT2_SPLIT)
        elif part.get("type") == "Split":
            splits.append((part.get("pattern") or {}).get("Regex"))
        elif part.get("type") != "ByteLevel":
            break
    else:
        if len(splits) == 1 and splits[0] in KNOWN_SPLITS:
            return KNOWN_SPLITS[splits[0]]
    raise UnsupportedModel(
        "GGUF export: llama.cpp has no pre-tokenizer matching this tokenizer's "
        f"({', '.join(sorted(set(KNOWN_SPLITS.values())))} are known)"
    )


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int):
            ids[kind] = token_id
    return ids


def _added_specials(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds BOS and EOS: told by where the bare encoding of a word sits in its
    encoding with special tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(
        (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), 0
    )
    return start > 0, len(full) > start + len(bare)


__all__ = ["GgufVocab", "gguf_vocab"]
