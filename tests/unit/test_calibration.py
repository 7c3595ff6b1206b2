"""Calibration sources, the sampler, chunking and its cache, exactly as docs/method.md §8 (and §9's
faithful rows). Real files in tmp_path, a real (tiny, locally trained) tokenizer, no network."""

from __future__ import annotations

import json
import os
import random
import time

# Nothing here may reach a hub (conftest sets these too; this keeps the file safe on its own).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import pytest
import torch

from bench.tiny import tiny_text, tiny_tokenizer
from mptui.engine.errors import CalibrationError
from mptui.engine.search.calibration import (
    CalibrationSpec,
    faithful_rows,
    load_calibration,
    load_documents,
    sample_documents,
    split_documents,
    tokenize_chunks,
)

SEQLEN = 50


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained here on Python's own help text (no file, no download)."""
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def _keep_global_random_state():
    """Tests that replay the reference seed the module-level stream; give it back after."""
    state = random.getstate()
    yield
    random.setstate(state)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --- documents ---------------------------------------------------------------------------------


def test_blank_lines_split_documents():
    text = "\n \nfirst doc\nline two\n\n  \n\t\nsecond\n \nthird  \n\u3000\n  fourth\n\n\n"
    assert split_documents(text) == ["first doc\nline two", "second", "third", "fourth"]
    assert split_documents("one\nline\n") == ["one\nline"]
    assert split_documents(" \n\t\n") == []


def test_txt_file_source_reads_documents_in_file_order(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfalpha\r\nstill alpha\r\n \r\n\r\nbeta\r\n")
    assert load_documents(str(path)) == ["alpha\nstill alpha", "beta"]


def test_jsonl_one_document_per_line_from_its_field(tmp_path):
    rows = [{"text": "one", "n": 1}, {"text": ""}, {"text": "three"}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_documents(str(path)) == ["one", "", "three"]  # blank lines are no rows
    other = write(tmp_path / "b.jsonl", '{"body": "x"}\n{"body": "y"}\n')
    assert load_documents(str(other), "body") == ["x", "y"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"body": "x"}\n', "line 2 has no 'text' field; pass text_field"),
        ('{"text": "ok"}\n\n{"text": \n', "line 3 is not valid JSON"),
        ('["text"]\n', "line 1 has no 'text' field"),
        ('{"text": "ok"}\n{"text": null}\n', "line 2 has a 'text' that is NoneType, not text"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(CalibrationError, match=message) as error:
        load_documents(str(path))
    assert str(path) in str(error.value)


# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "count"), [(42, 10), (7, 1), (0, 49)])
def test_sampler_is_random_sample_in_sampled_order(seed, count):
    docs = [f"doc {i}" for i in range(50)]
    expected = [docs[i] for i in random.Random(seed).sample(range(50), count)]
    assert sample_documents(docs, count, seed=seed) == expected
    assert sample_documents(docs, count) == [
        docs[i] for i in random.Random(42).sample(range(50), count)
    ]


def test_sampler_uses_all_documents_in_file_order_for_zero_or_too_many():
    docs = [f"doc {i}" for i in range(50)]
    for count in (0, 50, 80):
        assert sample_documents(docs, count) == docs
    with pytest.raises(CalibrationError, match="nsamples -1 must be 0"):
        sample_documents(docs, -1)


# --- tokenizing and chunks ---------------------------------------------------------------------


def test_join_with_a_blank_line_tokenize_once_and_drop_the_tail(tokenizer):
    docs = tiny_text(4)
    ids = tokenizer("\n\n".join(docs))["input_ids"]
    assert len(ids) % SEQLEN, "the test needs a tail to drop"
    chunks = tokenize_chunks(tokenizer, docs, SEQLEN)
    assert chunks.dtype == torch.long
    assert chunks.shape == (len(ids) // SEQLEN, SEQLEN)
    assert chunks.flatten().tolist() == ids[: chunks.numel()]
    one_by_one = [i for doc in docs for i in tokenizer(doc)["input_ids"]]
    assert one_by_one != ids  # the blank line between documents is part of the text


def test_chunks_are_cached_by_content(tokenizer, tmp_path):
    docs = tiny_text(4)
    first = tokenize_chunks(tokenizer, docs, SEQLEN, tmp_path)
    (cached,) = tmp_path.iterdir()  # one file, no temp file left behind
    assert cached.name.startswith("chunks-") and cached.suffix == ".pt"
    os.utime(cached, ns=(0, 0))  # a time no rewrite can give it, however coarse the clock
    again = tokenize_chunks(tokenizer, docs, SEQLEN, tmp_path)
    assert torch.equal(first, again)
    assert cached.stat().st_mtime_ns == 0  # read back, not written again
    assert sorted(tmp_path.iterdir()) == [cached]
    tokenize_chunks(tokenizer, docs, SEQLEN - 10, tmp_path)  # other seqlen
    tokenize_chunks(tokenizer, docs[:3], SEQLEN, tmp_path)  # other text
    tokenize_chunks(tiny_tokenizer(300), docs, SEQLEN, tmp_path)  # other tokenizer
    assert len(list(tmp_path.iterdir())) == 4


def test_an_unreadable_cache_file_is_made_again(tokenizer, tmp_path):
    docs = tiny_text(4)
    expected = tokenize_chunks(tokenizer, docs, SEQLEN, tmp_path)
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not a tensor")
    assert torch.equal(tokenize_chunks(tokenizer, docs, SEQLEN, tmp_path), expected)
    assert torch.equal(torch.load(cached), expected)


def test_spec_to_chunks(tokenizer, tmp_path):
    docs = tiny_text(10)
    path = write(tmp_path / "c.txt", "\n\n\n".join(docs))
    spec = CalibrationSpec(str(path), nsamples=3, seqlen=32, seed=5)
    chunks = load_calibration(spec, tokenizer, tmp_path / "cache")
    picked = [docs[i] for i in random.Random(5).sample(range(10), 3)]
    ids = tokenizer("\n\n".join(picked))["input_ids"]
    assert chunks.flatten().tolist() == ids[: chunks.numel()]
    assert chunks.shape == (len(ids) // 32, 32)
    assert spec.to_dict() == {
        "source": str(path), "nsamples": 3, "seqlen": 32, "seed": 5, "text_field": "text",
    }  # fmt: skip
    assert CalibrationSpec(**json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "calibration file '.*x.txt' does not exist"),
        ("", "calibration source '.*x.txt' has no text"),
        (" \n\t\n\n", "has no text"),
        ("short text", "'.*x.txt' gives \\d+ tokens, fewer than one chunk of 64; use a longer"),
    ],
)
def test_bad_calibration_files(tokenizer, tmp_path, content, message):
    path = tmp_path / "x.txt"
    if content is not None:
        write(path, content)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(CalibrationSpec(str(path), 0, 64), tokenizer)


def test_other_unusable_sources(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(CalibrationError, match="not one saved with datasets' save_to_disk"):
        load_documents(str(tmp_path / "folder"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match="is not UTF-8 text"):
        load_documents(str(latin))
    with pytest.raises(CalibrationError, match="does not exist"):
        load_documents("missing/file.jsonl")  # looks like owner/name, but names a file


# --- datasets sources --------------------------------------------------------------------------


def saved_table(tmp_path, rows: int, as_dict: bool = False):
    """A local datasets table on disk, as ``save_to_disk`` writes it."""
    folder = tmp_path / "saved"
    table = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(rows)]})
    (datasets.DatasetDict({"train": table}) if as_dict else table).save_to_disk(str(folder))
    return folder, table


@pytest.mark.parametrize("as_dict", [False, True])
def test_saved_datasets_folder(tmp_path, as_dict):
    folder, table = saved_table(tmp_path, 20, as_dict)
    assert load_documents(str(folder)) == list(table["text"])
    with pytest.raises(CalibrationError, match="has no 'body' column \\(it has text\\)"):
        load_documents(str(folder), "body")


def test_parquet_file(tmp_path):
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"body": ["a b", "c d"], "n": [1, 2]}).to_parquet(str(path))
    assert load_documents(str(path), "body") == ["a b", "c d"]


def test_unreachable_dataset_name_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    expected = r"could not load dataset 'nobody/nothing' from the hub or .* with calibration PATH"
    with pytest.raises(CalibrationError, match=expected):
        load_documents("nobody/nothing")
    assert time.monotonic() - start < 60  # liveness, not speed: hub retries would take minutes


def test_faithful_rows_reproduce_the_reference_draws(tmp_path):
    folder, table = saved_table(tmp_path, 1000)
    files_before = sorted(p.name for p in folder.iterdir())
    width, blocks = faithful_rows(str(folder), "text", [30, 60])
    # the reference, independently: two seeded splits, then random.seed(42) and successive
    # module-level random.sample calls on the kept rows
    kept = table.train_test_split(test_size=0.2, seed=42)["test"]
    kept = list(kept.train_test_split(test_size=0.5, seed=42)["train"]["text"])
    assert len(kept) == 100
    random.seed(42)
    assert width == [kept[i] for i in random.sample(range(100), 30)]
    assert blocks == [kept[i] for i in random.sample(range(100), 60)]
    (alone,) = faithful_rows(str(folder), "text", [60])  # BlockPruner: one draw from the seed
    random.seed(42)
    assert alone == [kept[i] for i in random.sample(range(100), 60)]
    assert sorted(p.name for p in folder.iterdir()) == files_before  # no index caches written
    with pytest.raises(CalibrationError, match=r"keeps 100 rows .* fewer than the 101"):
        faithful_rows(str(folder), "text", [101])


def test_faithful_rows_from_a_jsonl_file_match_the_same_table(tmp_path):
    folder, table = saved_table(tmp_path, 200)
    path = write(
        tmp_path / "rows.jsonl", "".join(json.dumps({"t": t}) + "\n" for t in table["text"])
    )
    assert faithful_rows(str(path), "t", [5, 7]) == faithful_rows(str(folder), "text", [5, 7])
