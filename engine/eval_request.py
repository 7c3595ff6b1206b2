"""What an evaluation is asked to do: plain values, free of torch, so commands can carry it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .defaults import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_SEQLEN
from .errors import BadInput

#: The zero-shot tasks of docs/method.md §5.
ZERO_SHOT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate: lm-eval tasks (none: skip), and a text for a rolling perplexity."""

    tasks: tuple[str, ...] = ()
    include_path: str | None = None
    limit: int | None = None
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    text: str | None = None
    seqlen: int = DEFAULT_SEQLEN

    @classmethod
    def from_options(
        cls,
        tasks: str | None,
        text: str | None,
        seqlen: int,
        *,
        include_path: str | None = None,
        limit: int | None = None,
        batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    ) -> EvalRequest:
        """From comma-separated task names; with neither tasks nor a text, the tasks of
        docs/method.md §5."""
        names: tuple[str, ...] = ()
        if tasks:
            names = tuple(name.strip() for name in tasks.split(",") if name.strip())
        elif not text:
            names = ZERO_SHOT_TASKS
        return cls(names, include_path, limit, batch_size, text, seqlen)

    def check(self) -> None:
        """Fail before anything long starts."""
        if not self.tasks and not self.text:
            raise BadInput("nothing to evaluate: give tasks or a text for perplexity")
        if self.text and not Path(self.text).is_file():
            raise BadInput(f"perplexity text '{self.text}' does not exist")
        if self.include_path and not Path(self.include_path).is_dir():
            raise BadInput(f"task folder '{self.include_path}' does not exist")
