"""Calibration text -> fixed token chunks, exactly as SPEC §8 says (and §9 for faithful mode).

Sources: a ``.txt`` file (documents split at blank lines), a ``.jsonl`` file (one document per
line from a field), a ``.parquet`` file or a folder saved with ``datasets`` (a column), or a
datasets name when the hub or a local datasets cache has it. Tokenized chunks are cached on disk
by a hash of everything that decides them, so a resumed or repeated run does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import CalibrationError

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n(?:[ \t\r\f\v]*\n)*")
_DATASET_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where the calibration text comes from and how it is cut (recorded in plan.json)."""

    source: str
    nsamples: int = 0
    seqlen: int = 2048
    seed: int = 42
    text_field: str = "text"

    def to_dict(self) -> dict:
        return asdict(self)


def split_documents(text: str) -> list[str]:
    """Documents at blank lines; whitespace-only lines are blank, runs are one separator."""
    text = text.replace("\r\n", "\n")
    return [doc.strip() for doc in _BLANK_LINES.split(text) if doc.strip()]


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CalibrationError(
                    f"{path}: line {number} is not valid JSON ({error.msg})"
                ) from None
            if not isinstance(row, dict) or text_field not in row:
                raise CalibrationError(
                    f"{path}: line {number} has no '{text_field}' field; pass --text-field"
                )
            documents.append(str(row[text_field]))
    return documents


def _column(table, text_field: str, where: str) -> list[str]:
    if text_field not in table.column_names:
        raise CalibrationError(
            f"{where} has no '{text_field}' column (it has {', '.join(table.column_names)}); "
            "pass --text-field"
        )
    return [str(v) for v in table[text_field]]


def _load_table(source: str):
    """A ``datasets`` table: a saved folder, a parquet file, or a name (train split)."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
            return table["train"] if isinstance(table, datasets.DatasetDict) else table
        if path.suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path))
        return datasets.load_dataset(source, split="train")
    except Exception as error:  # datasets raises many types for "not reachable"
        raise CalibrationError(
            f"could not load dataset '{source}' (offline, or not in the local datasets cache: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "pass a local .txt or .jsonl file"
        ) from error


def _is_table(source: str) -> bool:
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if path.suffix == ".parquet":
        return True
    return not path.exists() and bool(_DATASET_NAME.match(source)) and path.suffix == ""


def load_documents(source: str, text_field: str = "text") -> list[str]:
    """All documents of ``source`` in file order."""
    if _is_table(source):
        documents = _column(_load_table(source), text_field, f"dataset '{source}'")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CalibrationError(f"calibration file '{source}' does not exist")
        if path.suffix == ".jsonl":
            documents = _jsonl_documents(path, text_field)
        else:
            documents = split_documents(path.read_text(encoding="utf-8"))
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise CalibrationError(f"calibration source '{source}' has no text")
    return documents


def sample_documents(documents: Sequence[str], nsamples: int, seed: int = 42) -> list[str]:
    """``random.Random(seed).sample`` order, as the reference; 0 or too many: all, in order."""
    if nsamples <= 0 or nsamples >= len(documents):
        return list(documents)
    picks = random.Random(seed).sample(range(len(documents)), nsamples)
    return [documents[i] for i in picks]


def faithful_rows(source: str, text_field: str, counts: Sequence[int]) -> list[list[str]]:
    """The reference's rows (SPEC §9): two seeded splits, then successive draws of one stream.

    The kept part is the train half of a 50/50 split of the 20% test part of ``train``
    (5,200 rows of alpaca). ``random.seed(42)`` then ``random.sample`` per count is reproduced
    with one ``random.Random(42)``, which draws the same numbers. Rows then go through the same
    join, tokenize and chunk path as any other documents.
    """
    table = _load_table(source)
    held_out = table.train_test_split(test_size=0.2, seed=42)["test"]
    kept = held_out.train_test_split(test_size=0.5, seed=42)["train"]
    rows = _column(kept, text_field, f"dataset '{source}'")
    stream = random.Random(42)
    out = []
    for count in counts:
        if count > len(rows):
            raise CalibrationError(
                f"dataset '{source}' keeps {len(rows)} rows after the reference's splits; "
                f"{count} were asked for"
            )
        out.append([rows[i] for i in stream.sample(range(len(rows)), count)])
    return out


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_key(tokenizer, text: str, seqlen: int) -> str:
    digest = hashlib.sha256()
    for part in (_tokenizer_fingerprint(tokenizer), str(len(tokenizer)), str(seqlen), text):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def tokenize_chunks(
    tokenizer, documents: Sequence[str], seqlen: int, cache_dir: Path | None = None
) -> torch.Tensor:
    """Join with a blank line, tokenize once, cut into ``[n, seqlen]``; the tail is dropped."""
    text = "\n\n".join(documents)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"chunks-{_cache_key(tokenizer, text, seqlen)}.pt"
        if cache_file.exists():
            return torch.load(cache_file)
    ids = tokenizer(text)["input_ids"]
    if len(ids) < seqlen:
        raise CalibrationError(
            f"the calibration text gives {len(ids)} tokens, fewer than one chunk of {seqlen}; "
            "use a longer file or a smaller --seqlen"
        )
    count = len(ids) // seqlen
    chunks = torch.tensor(ids[: count * seqlen], dtype=torch.long).view(count, seqlen)
    if cache_file is not None:
        _save_atomic(chunks, cache_file)
    return chunks


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(tensor, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_calibration(
    spec: CalibrationSpec, tokenizer, cache_dir: Path | None = None
) -> torch.Tensor:
    """Load, sample and tokenize ``spec``'s documents into chunks."""
    documents = sample_documents(
        load_documents(spec.source, spec.text_field), spec.nsamples, spec.seed
    )
    return tokenize_chunks(tokenizer, documents, spec.seqlen, cache_dir)
