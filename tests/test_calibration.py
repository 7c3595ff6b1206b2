"""Calibration sources and the sampler, exactly as SPEC §8 (and §9's faithful rows)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mptui.engine.calibration import (
    CalibrationSpec,
    faithful_rows,
    load_calibration,
    load_documents,
    sample_documents,
    split_documents,
    tokenize_chunks,
)
from mptui.engine.errors import CalibrationError
from mptui.engine.tiny import tiny_text, tiny_tokenizer


def test_blank_lines_split_documents():
    text = "first doc\nline two\n\n  \n\t\nsecond\n \nthird  \n\n\n"
    assert split_documents(text) == ["first doc\nline two", "second", "third"]


def test_txt_and_jsonl_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("alpha\n\nbeta\n")
    assert load_documents(str(txt)) == ["alpha", "beta"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "x": 1}\n')
    assert load_documents(str(jsonl)) == ["one", "two"]
    other = tmp_path / "b.jsonl"
    other.write_text('{"body": "x"}\n')
    assert load_documents(str(other), "body") == ["x"]
    with pytest.raises(CalibrationError, match="line 1 has no 'text' field"):
        load_documents(str(other))
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(CalibrationError, match="line 2 is not valid JSON"):
        load_documents(str(broken))


def test_sampler_is_random_sample_in_sampled_order():
    docs = [f"doc {i}" for i in range(50)]
    expected = [docs[i] for i in random.Random(7).sample(range(50), 10)]
    assert sample_documents(docs, 10, seed=7) == expected
    assert sample_documents(docs, 0) == docs
    assert sample_documents(docs, 80) == docs


def test_join_tokenize_once_and_drop_the_tail(tmp_path):
    tokenizer = tiny_tokenizer()
    docs = tiny_text(4)
    ids = tokenizer("\n\n".join(docs))["input_ids"]
    chunks = tokenize_chunks(tokenizer, docs, 50)
    assert chunks.shape == (len(ids) // 50, 50)
    assert chunks.flatten().tolist() == ids[: chunks.numel()]


def test_chunks_are_cached_by_content(tmp_path):
    tokenizer = tiny_tokenizer()
    docs = tiny_text(4)
    first = tokenize_chunks(tokenizer, docs, 50, tmp_path)
    files = list(tmp_path.glob("chunks-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = tokenize_chunks(tokenizer, docs, 50, tmp_path)
    assert torch.equal(first, again)
    assert files[0].stat().st_mtime_ns == stamp
    tokenize_chunks(tokenizer, docs, 40, tmp_path)
    tokenize_chunks(tokenizer, docs[:3], 50, tmp_path)
    assert len(list(tmp_path.glob("chunks-*.pt"))) == 3


def test_spec_to_chunks(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(tiny_text(10)))
    spec = CalibrationSpec(str(path), nsamples=3, seqlen=32, seed=5)
    chunks = load_calibration(spec, tiny_tokenizer())
    picked = [tiny_text(10)[i] for i in random.Random(5).sample(range(10), 3)]
    assert (
        chunks.flatten().tolist()
        == tiny_tokenizer()("\n\n".join(picked))["input_ids"][: chunks.numel()]
    )
    assert spec.to_dict() == {
        "source": str(path), "nsamples": 3, "seqlen": 32, "seed": 5, "text_field": "text",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "has no text"), ("short text", "fewer than one chunk")],
)
def test_bad_calibration_files(tmp_path, content, message):
    path = tmp_path / "x.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(CalibrationSpec(str(path), 0, 64), tiny_tokenizer())


def test_unreachable_dataset_name_is_a_clear_error():
    with pytest.raises(CalibrationError, match="could not load dataset 'nobody/nothing'"):
        load_documents("nobody/nothing")


def alpaca_like(tmp_path, rows: int):
    import datasets

    folder = tmp_path / "alpaca"
    table = datasets.Dataset.from_dict({"text": [f"row {i} text" for i in range(rows)]})
    datasets.DatasetDict({"train": table}).save_to_disk(str(folder))
    return folder, table


def test_faithful_rows_reproduce_the_reference_draws(tmp_path):
    folder, table = alpaca_like(tmp_path, 4000)
    width, blocks = faithful_rows(str(folder), "text", [128, 256])
    # the reference: two seeded splits, then random.seed(42) and successive random.sample
    kept = table.train_test_split(test_size=0.2, seed=42)["test"]
    kept = kept.train_test_split(test_size=0.5, seed=42)["train"]
    assert len(kept) == 400
    random.seed(42)
    expected_width = [kept["text"][i] for i in random.sample(range(400), 128)]
    expected_blocks = [kept["text"][i] for i in random.sample(range(400), 256)]
    assert width == expected_width
    assert blocks == expected_blocks
    with pytest.raises(CalibrationError, match="keeps 400 rows"):
        faithful_rows(str(folder), "text", [500])


def test_saved_dataset_folder_and_jsonl_field(tmp_path):
    folder, table = alpaca_like(tmp_path, 20)
    assert load_documents(str(folder)) == table["text"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in table["text"]))
    assert load_documents(str(rows), "instruction") == table["text"]
