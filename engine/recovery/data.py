"""Training examples for recovery: instruction rows in the Alpaca template, or plain text.

- ``.jsonl`` / ``.parquet`` / a saved or named dataset whose rows have ``instruction`` and
  ``output`` (``input`` optional): the Alpaca prompt, then the response and EOS; the loss is on
  the response only (the prompt's labels are -100), as the reference trained.
- anything else (a ``.txt`` file): one token stream cut into ``seqlen`` chunks, every token a
  label (causal LM loss), exactly as calibration text is cut (docs/method.md §8).

Every problem with the data is one :class:`BadInput` line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput, CalibrationError, setting
from ..search.calibration import (
    is_table,
    load_documents,
    open_table,
    split_documents,
    tokenize_chunks,
)

#: Label of a token that carries no loss (the prompt, padding): PyTorch's ignore_index.
IGNORE = -100

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_FIELDS = ("instruction", "output")


@dataclass(frozen=True)
class Example:
    """Token ids and their labels (same length; ``IGNORE`` where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def alpaca_prompt(row: dict) -> str:
    """The reference's prompt for one row (with or without its ``input``)."""
    if row.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=row["instruction"], input=row["input"])
    return PROMPT_NO_INPUT.format(instruction=row["instruction"])


def _is_rows(source: str, path: Path) -> bool:
    return path.suffix == ".jsonl" or is_table(source)


def check_data(source: str) -> None:
    """Without a tokenizer: the source exists, and instruction rows have their fields."""
    path = Path(source).expanduser()
    if not is_table(source) and not path.is_file():
        raise BadInput(f"recovery data '{source}' does not exist; check ", setting("recovery.data"))
    if _is_rows(source, path):
        _rows(source, path)
    elif not path.read_text(errors="replace").strip():
        raise BadInput(f"recovery data '{source}' is empty")


def load_examples(source: str, tokenizer, seqlen: int, cache_dir: Path | None = None):
    """All examples of ``source``; instruction rows for a table or ``.jsonl``, else text."""
    path = Path(source).expanduser()
    check_data(source)
    if _is_rows(source, path):
        examples = [instruction_example(r, tokenizer, seqlen) for r in _rows(source, path)]
    else:
        examples = _text_examples(source, tokenizer, seqlen, cache_dir)
    examples = [e for e in examples if e.label_tokens]
    if not examples:
        raise BadInput(
            f"recovery data '{source}' has no example with a response token within ",
            setting("recovery.seqlen"),
            f" {seqlen}; raise ",
            setting("recovery.seqlen"),
        )
    return examples


def _rows(source: str, path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        try:
            rows = list(open_table(source))
        except CalibrationError as error:
            raise BadInput(f"recovery data: {str(error).partition('; pass')[0]}") from None
    if not rows:
        raise BadInput(f"recovery data '{source}' is empty")
    for number, row in enumerate(rows, start=1):
        missing = [f for f in _FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise BadInput(
                f"recovery data '{source}': row {number} has no text '{missing[0]}' field "
                "(instruction rows need 'instruction' and 'output', 'input' optional)"
            )
    return rows


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise BadInput(f"recovery data '{path}' is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadInput(
                f"recovery data '{path}': line {number} is not JSON ({error.msg})"
            ) from None
        rows.append(row if isinstance(row, dict) else {})
    return rows


def calibration_text(source: str, documents: int) -> str:
    """Plain text of the first ``documents`` examples of ``source``, blank-line separated:
    instruction rows as prompt and response, text as it is. A recovery that starts from an
    export has no calibration set of its own; the load scores the model on this."""
    path = Path(source).expanduser()
    check_data(source)
    if _is_rows(source, path):
        texts = [alpaca_prompt(row) + row["output"] for row in _rows(source, path)[:documents]]
    else:
        texts = load_documents(source)[:documents]
    return "\n\n".join("\n".join(split_documents(text)) for text in texts) + "\n"


def instruction_example(row: dict, tokenizer, seqlen: int) -> Example:
    """Prompt tokens (label IGNORE) then response tokens and EOS, cut to ``seqlen``."""
    prompt = tokenizer(alpaca_prompt(row))["input_ids"]
    response = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = (list(prompt) + list(response) + eos)[:seqlen]
    labels = ([IGNORE] * len(prompt) + list(response) + eos)[:seqlen]
    return Example(tuple(ids), tuple(labels))


def _text_examples(source: str, tokenizer, seqlen: int, cache_dir: Path | None) -> list[Example]:
    label = f"recovery data '{source}'"
    try:
        documents = load_documents(source)
    except CalibrationError:
        raise BadInput(f"{label} is empty or not UTF-8 text") from None
    chunks = tokenize_chunks(tokenizer, documents, seqlen, cache_dir, label=label)
    return [Example(tuple(c.tolist()), tuple(c.tolist())) for c in chunks]


def split_validation(examples: list[Example], count: int) -> tuple[list, list]:
    """The last ``count`` examples (at most half) held out: (train, validation)."""
    held = min(count, len(examples) // 2)
    if held < 1:
        raise BadInput(
            "recovery data has a single example; give more or ", setting("recovery.val_data")
        )
    return examples[:-held], examples[-held:]
