"""Calibration text -> fixed token chunks, as docs/method.md §8 states (§9: faithful mode).

Sources: a ``.txt`` file (documents split at blank lines), a ``.jsonl`` file (one document per
line from a field), a ``.parquet`` file or a folder saved with ``datasets`` (a column), or a
datasets name when the hub or a local datasets cache has it. Tokenized chunks are cached on disk
by a hash of everything that decides them, so a resumed or repeated run does not tokenize again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CalibrationError, DiskFull, setting
from ..session.disk import write_bytes_atomic
from .settings import CalibrationSpec

log = logging.getLogger("mptui.engine")

if TYPE_CHECKING:  # torch waits for the tokens: the documents are checked without it
    import datasets
    import torch

# A newline followed by one or more lines holding only whitespace (Unicode-aware, as str.strip).
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
# A hub id: ``owner/name``, each part starting with a letter or digit (so ``./x`` is a path).
_DATASET_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Names ending like these are meant as files; if missing, "does not exist" is the helpful error.
_FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
# What ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` leave in their folder.
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# The reference's split seed and its ``random.seed`` for the draws (docs/method.md §9).
_FAITHFUL_SEED = 42
#: More characters per token than tokenizers give on text: calibration text this many times
#: longer than a chunk holds one, so the check before loading does not tokenize it (the load's
#: own count still decides).
MOST_CHARS_PER_TOKEN = 16


# --- documents ---------------------------------------------------------------------------------


def split_documents(text: str) -> list[str]:
    """Documents at blank lines; whitespace-only lines are blank, runs are one separator.

    Each document is stripped and empty ones are dropped, so leading or trailing blank lines
    never make a document of their own.
    """
    return [doc.strip() for doc in _BLANK_LINES.split(text) if doc.strip()]


def _read_text(path: Path) -> str:
    """The file as text; ``utf-8-sig`` so a byte-order mark does not become a token."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CalibrationError(
            f"calibration file '{path}' is not UTF-8 text; convert it to UTF-8"
        ) from None


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    """One document per JSON line; blank lines are not rows, so they are skipped."""
    documents = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CalibrationError(
                f"{path}: line {number} is not valid JSON ({error.msg}); fix or remove that line"
            ) from None
        if not isinstance(row, dict) or text_field not in row:
            raise CalibrationError(
                f"{path}: line {number} has no '{text_field}' field; pass ",
                setting("text_field"),
                " with the field that holds the text",
            )
        documents.append(_as_text(row[text_field], f"{path}: line {number}", text_field))
    return documents


def _as_text(value: object, where: str, text_field: str) -> str:
    """Only strings are text; ``str(None)`` would quietly calibrate on the word "None"."""
    if not isinstance(value, str):
        raise CalibrationError(
            f"{where} has a '{text_field}' that is {type(value).__name__}, not text; pass ",
            setting("text_field"),
            " with a text field",
        )
    return value


def _column(table: datasets.Dataset, text_field: str, source: str) -> list[str]:
    """The ``text_field`` column as a list of strings."""
    if text_field not in table.column_names:
        raise CalibrationError(
            f"dataset '{source}' has no '{text_field}' column (it has "
            f"{', '.join(table.column_names)}); pass ",
            setting("text_field"),
            " with one of them",
        )
    return [
        _as_text(value, f"dataset '{source}' row {index}", text_field)
        for index, value in enumerate(table[text_field])
    ]


# --- tables (datasets) -------------------------------------------------------------------------


def is_table(source: str) -> bool:
    """A saved datasets folder, a parquet file, or a name that is no local path: a source read
    as rows of a table (calibration takes one column; recovery takes instruction rows)."""
    path = Path(source).expanduser()
    if path.exists():
        return path.is_dir() or path.suffix == ".parquet"
    return bool(_DATASET_NAME.fullmatch(source)) and path.suffix not in _FILE_SUFFIXES


def open_table(source: str) -> datasets.Dataset:
    """The ``train`` table of a table source (see :func:`is_table`); every problem is one
    :class:`CalibrationError` line."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _saved_table(path)
    if path.is_file():
        return _parquet_table(path)
    return _named_table(source)


def _saved_table(path: Path) -> datasets.Dataset:
    """A ``save_to_disk`` folder, read into memory so that the faithful splits write no
    index cache files into the user's folder (``datasets`` would, next to its arrow files)."""
    import datasets

    if not any((path / marker).is_file() for marker in _SAVED_MARKERS):
        raise CalibrationError(
            f"'{path}' is a folder but not one saved with datasets' save_to_disk; "
            "pass a .txt, .jsonl or .parquet file or a saved datasets folder"
        )
    try:
        table = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as error:  # datasets raises many types for a damaged folder
        raise CalibrationError(
            f"could not read the saved dataset '{path}' ({_first_line(error)}); "
            "save it again with save_to_disk or pass a .txt or .jsonl file"
        ) from error
    if isinstance(table, datasets.DatasetDict):
        if "train" not in table:
            raise CalibrationError(
                f"saved dataset '{path}' has no 'train' split (it has {', '.join(table)}); "
                "save the split to use as its own folder"
            )
        return table["train"]
    return table


def _parquet_table(path: Path) -> datasets.Dataset:
    """A parquet file, in memory (``Dataset.from_parquet`` would copy it into the HF cache)."""
    import datasets
    import pyarrow.parquet as pq

    try:
        return datasets.Dataset(pq.read_table(path))
    except Exception as error:  # pyarrow raises several types for a bad file
        raise CalibrationError(
            f"could not read the parquet file '{path}' ({_first_line(error)}); "
            "pass a valid .parquet, .txt or .jsonl file"
        ) from error


def _named_table(name: str) -> datasets.Dataset:
    """``load_dataset(name, split="train")``: works only when the hub or the cache has it."""
    import datasets

    try:
        return datasets.load_dataset(name, split="train")
    except Exception as error:  # datasets raises many types for "not reachable"
        raise CalibrationError(
            f"could not load dataset '{name}' from the hub or the local datasets cache "
            f"({_first_line(error)}); pass a local .txt, .jsonl or .parquet file with ",
            setting("calibration"),
            " PATH",
        ) from error


def _first_line(error: Exception) -> str:
    """Enough of a library's error to say what went wrong, inside one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- loading and sampling ----------------------------------------------------------------------


def load_documents(source: str, text_field: str = "text") -> list[str]:
    """All documents of ``source`` in file order.

    A ``.jsonl`` line or table row is one document even when its text is empty, so the
    sampler's indices are the file's rows; other files are read as text split at blank lines.
    """
    if is_table(source):
        documents = _column(open_table(source), text_field, source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CalibrationError(f"calibration file '{source}' does not exist; check the path")
        if path.suffix == ".jsonl":
            documents = _jsonl_documents(path, text_field)
        else:
            documents = split_documents(_read_text(path))
    _require_text(documents, source)
    return documents


def _require_text(documents: Iterable[str], source: str) -> None:
    if not any(doc.strip() for doc in documents):
        raise CalibrationError(
            f"calibration source '{source}' has no text; pass a file with at least one document"
        )


def sample_documents(documents: Sequence[str], nsamples: int, seed: int = 42) -> list[str]:
    """``random.Random(seed).sample`` order, as the reference; 0 or too many: all, in order."""
    if nsamples < 0:
        raise CalibrationError(f"nsamples {nsamples} must be 0 (all documents) or more")
    if nsamples == 0 or nsamples >= len(documents):
        return list(documents)
    picks = random.Random(seed).sample(range(len(documents)), nsamples)
    return [documents[i] for i in picks]


def faithful_rows(source: str, text_field: str, counts: Sequence[int]) -> list[list[str]]:
    """The reference's rows (docs/method.md §9): two seeded splits, then draws from one stream.

    The kept part is the train half of a 50/50 split of the 20% test part of ``train``
    (5,200 rows of alpaca's 52,002). ``random.seed(42)`` then one ``random.sample`` per count
    is reproduced with one ``random.Random(42)``: the module-level functions are methods of a
    hidden ``Random`` instance, so the draws are the same numbers, without touching the global
    stream other code may use.

    We chose to keep rows as documents: they go through the same join, tokenize-once and chunk
    path as any other source rather than being tokenized one row at a time. A ``.txt`` or
    ``.jsonl`` source works too; its documents are the table's rows.
    """
    rows = _column(_splits_kept(_rows_table(source, text_field)), text_field, source)
    stream = random.Random(_FAITHFUL_SEED)
    drawn = []
    for count in counts:
        if count > len(rows):
            raise CalibrationError(
                f"dataset '{source}' keeps {len(rows)} rows after the reference's splits, "
                f"fewer than the {count} it draws; use a larger dataset"
            )
        drawn.append([rows[i] for i in stream.sample(range(len(rows)), count)])
    return drawn


def _rows_table(source: str, text_field: str) -> datasets.Dataset:
    """The source as a table, so the reference's ``train_test_split`` calls apply unchanged."""
    if is_table(source):
        return open_table(source)
    import datasets

    return datasets.Dataset.from_dict({text_field: load_documents(source, text_field)})


def _splits_kept(table: datasets.Dataset) -> datasets.Dataset:
    """The reference's two seeded splits: 20% test, then the train half of that."""
    held_out = table.train_test_split(test_size=0.2, seed=_FAITHFUL_SEED)["test"]
    return held_out.train_test_split(test_size=0.5, seed=_FAITHFUL_SEED)["train"]


# --- tokenizing and the chunk cache ------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer) -> str:
    """What decides the token ids: the backend JSON (vocabulary, merges, special-token
    post-processing) when there is one, else the vocabulary and where it came from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True) + tokenizer.name_or_path
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_key(tokenizer, text: str, seqlen: int) -> str:
    """Hash of everything that decides the chunks; the free text goes last, so no part can be
    mistaken for another."""
    digest = hashlib.sha256()
    for part in (_tokenizer_fingerprint(tokenizer), str(len(tokenizer)), str(seqlen), text):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def tokenize_chunks(
    tokenizer,
    documents: Sequence[str],
    seqlen: int,
    cache_dir: Path | None = None,
    *,
    label: str = "the calibration text",
) -> torch.Tensor:
    """Join with a blank line, tokenize once, cut into ``[n, seqlen]``; the tail is dropped.

    With ``cache_dir``, the chunks are stored there under a hash of the tokenizer, the text
    and ``seqlen``, and reused on the next call with the same inputs. ``label`` names the
    source in the error for text shorter than one chunk.
    """
    if seqlen < 1:
        raise CalibrationError(setting("seqlen"), f" {seqlen} must be 1 or more")
    text = _joined_text(documents)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"chunks-{_cache_key(tokenizer, text, seqlen)}.pt"
        cached = _read_cached(cache_file, seqlen)
        if cached is not None:
            return cached
    # verbose=False: the whole text is longer than the model's window on purpose, and the
    # tokenizer's warning about that would only alarm (and scribble over the TUI).
    ids = tokenizer(text, verbose=False)["input_ids"]
    _require_one_chunk(len(ids), seqlen, label)
    import torch

    count = len(ids) // seqlen
    chunks = torch.tensor(ids[: count * seqlen], dtype=torch.long).view(count, seqlen)
    if cache_file is not None:
        _save_atomic(chunks, cache_file)
    return chunks


def _read_cached(path: Path, seqlen: int) -> torch.Tensor | None:
    """The cached chunks, or None when absent or unreadable (then they are made again and the
    file replaced, rather than one bad file failing every later run)."""
    if not path.is_file():
        return None
    import torch

    try:
        chunks = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    usable = isinstance(chunks, torch.Tensor) and chunks.dtype == torch.long
    return chunks if usable and chunks.dim() == 2 and chunks.shape[1] == seqlen else None


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    """Temp file then rename (a crash or a parallel run never leaves half a file). It is only a
    cache: on a full disk the run goes on without it."""
    import torch

    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    try:
        write_bytes_atomic(path, buffer.getbuffer())
    except DiskFull as error:
        log.warning("calibration tokens not cached: %s", error)


def load_calibration(
    spec: CalibrationSpec, tokenizer, cache_dir: Path | None = None
) -> torch.Tensor:
    """Load, sample and tokenize ``spec``'s documents into ``[n_chunks, seqlen]`` token ids."""
    documents = load_documents(spec.source, spec.text_field)
    picked = sample_documents(documents, spec.nsamples, spec.seed)
    return tokenize_chunks(tokenizer, picked, spec.seqlen, cache_dir, label=_source_label(spec))


def check_one_chunk(documents: Sequence[str], spec: CalibrationSpec, tokenizer_file: Path) -> None:
    """Before the model loads: ``spec``'s sample of ``documents`` gives one chunk, counted as
    :func:`load_calibration` counts, with the model's ``tokenizer.json`` read by ``tokenizers``
    (no torch). Only a text short enough to be in doubt is tokenized, so a long calibration set
    is not tokenized twice; a file ``tokenizers`` cannot read is left to the load."""
    text = _joined_text(sample_documents(documents, spec.nsamples, spec.seed))
    if len(text) >= MOST_CHARS_PER_TOKEN * spec.seqlen:
        return
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception:  # tokenizers raises a bare Exception for a file it cannot read
        return
    tokenizer.no_truncation()  # as transformers calls it: the whole text, unpadded
    tokenizer.no_padding()
    _require_one_chunk(len(tokenizer.encode(text).ids), spec.seqlen, _source_label(spec))


def _joined_text(documents: Sequence[str]) -> str:
    """The one text the chunks are cut from: the documents joined by a blank line."""
    return "\n\n".join(documents)


def _source_label(spec: CalibrationSpec) -> str:
    return f"calibration source '{spec.source}'"


def _require_one_chunk(tokens: int, seqlen: int, label: str) -> None:
    if tokens < seqlen:
        raise CalibrationError(
            f"{label} gives {tokens} tokens, fewer than one chunk of {seqlen}; "
            "use a longer file or a smaller ",
            setting("seqlen"),
        )
