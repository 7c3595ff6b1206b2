"""A local lm-eval task for the demo, so that evaluation works offline.

``mptui_demo_order``: a sentence of the held-out demo text is cut in half; the model picks its
true next six words among four orderings of the same words, which any language model should get
mostly right and a damaged one less often (chance is 25%; README.md has the demo's scores).
The items are built once, deterministically, by ``python -m mptui.demo.tasks``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from mptui.engine.api import EvalRequest

HERE = Path(__file__).parent
TASK = EvalRequest.DEMO_TASK
ITEMS = HERE / "order.jsonl"
CHOICES = 4
WORDS = 6


def build_items(text: str, count: int = 200, seed: int = 7) -> list[dict]:
    """Items from ``text``: context, ``CHOICES`` orderings of what follows, the true one's index."""
    flat = re.sub(r"\s+", " ", text)
    sentences = [s for s in re.split(r"(?<=[.!?]) ", flat) if _usable(s.split())]
    rng = random.Random(seed)
    rng.shuffle(sentences)
    items = []
    for sentence in sentences[:count]:
        words = sentence.split()
        cut = len(words) // 2
        following = words[cut : cut + WORDS]
        true = " " + " ".join(following)
        choices = [true]
        while len(choices) < CHOICES:
            shuffled = rng.sample(following, len(following))
            candidate = " " + " ".join(shuffled)
            if candidate not in choices:
                choices.append(candidate)
        rng.shuffle(choices)
        items.append(
            {"context": " ".join(words[:cut]), "choices": choices, "label": choices.index(true)}
        )
    return items


def _usable(words: list[str]) -> bool:
    """Long enough, and what follows the cut has at least ``CHOICES`` distinct orderings."""
    return 12 <= len(words) <= 40 and len(set(words[len(words) // 2 :][:WORDS])) >= 2


def include_path(cache_root: Path) -> Path:
    """A folder for ``--include-path`` holding the task's YAML, under ``cache_root``.

    The engine writes it (``--include-path demo`` and ``--tasks mptui_demo_order`` name the same
    folder in the cache), so there is one YAML and one place that knows lm-eval's quirks.
    """
    return EvalRequest.demo_task_folder(cache_root)


def main() -> None:
    items = build_items((HERE / "validation.txt").read_text(encoding="utf-8"))
    ITEMS.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"{len(items)} items written to {ITEMS}")


if __name__ == "__main__":
    main()
