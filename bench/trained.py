"""The second trained benchmark model: ``python -m bench build-qwen12`` (bench/RESULTS.md).

A model with random weights is no benchmark of a search: its blocks matter about equally, so
any plan is about as good as another. This one is trained here, offline and seeded, by the demo
model's own code (mptui/demo/build.py), but of another family (Qwen2, with biased QKV
projections), twice as deep (12 layers), on text the demo never saw: the docstrings of installed
third-party packages (numpy and networkx) instead of the standard library's, with a tokenizer of
its own. The text is split into calibration text (trained on) and held-out text (never trained
on), as for the demo.

Building takes minutes, so the result is kept under ``$XDG_CACHE_HOME/mptui-bench`` (by default
``~/.cache/mptui-bench``) in a folder named by a hash of the recipe and of the versions of what
the result depends on (the source packages, torch, transformers, tokenizers): a second build
with the same settings only returns that folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import packages_distributions, version
from pathlib import Path

import torch

from mptui.demo.build import (
    Training,
    distinct_documents,
    package_docstrings,
    token_stream,
    train,
    train_tokenizer,
    write_text,
)
from mptui.places import cache_dir

from .tiny import family_config

#: The file whose presence marks a finished build.
REPORT = "build_report.json"


#: 486 s on one thread of 2 cores shared by five engineers (2026-12-03); twice the width and
#: the batch would have taken half an hour there, too long for a benchmark's set-up.
QWEN12_TRAINING = Training(steps=400, batch=8, seqlen=128, learning_rate=4e-3, warmup=30)


@dataclass(frozen=True)
class Recipe:
    """Everything a build depends on besides the installed versions; its hash names the cache."""

    name: str = "qwen12"
    family: str = "qwen2"
    packages: tuple[str, ...] = ("numpy", "networkx")
    vocab_size: int = 2048
    num_layers: int = 12
    hidden_size: int = 96
    intermediate_size: int = 256
    heads: int = 4
    kv_heads: int = 2
    training: Training = QWEN12_TRAINING
    validation_share: float = 0.05
    max_chars: int = 2_400_000

    def versions(self) -> dict[str, str]:
        """Versions of the distributions the text, tokenizer and training come from."""
        owners = packages_distributions()
        names = {owners.get(p, [p])[0] for p in self.packages}
        names |= {"torch", "transformers", "tokenizers"}
        return {name: version(name) for name in sorted(names)}

    def folder(self, root: Path) -> Path:
        settings = {"recipe": dataclasses.asdict(self), "versions": self.versions()}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return root / f"{self.name}-{digest[:12]}"


QWEN12 = Recipe()


def default_root() -> Path:
    return cache_dir().with_name("mptui-bench")


def build_trained(
    recipe: Recipe = QWEN12, root: Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """The folder holding ``model/``, ``calibration.txt``, ``validation.txt`` and the build
    report, built unless a finished build of the same settings is already there.

    The build goes to a folder of its own first and is renamed into place when complete, so an
    interrupted build is never taken for a finished one."""
    folder = recipe.folder(root or default_root())
    if (folder / REPORT).exists():
        return folder
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    docs = distinct_documents(package_docstrings(list(recipe.packages)), recipe.training.seed)
    calibration, _ = write_text(docs, partial, recipe.validation_share, recipe.max_chars)
    tokenizer = train_tokenizer(calibration, recipe.vocab_size)
    stream = token_stream(tokenizer, calibration)
    log(f"{len(docs)} documents, {len(stream):,} training tokens")
    model = _untrained_model(recipe)
    seconds = train(model, stream, log, recipe.training)
    model.save_pretrained(partial / "model")
    tokenizer.save_pretrained(partial / "model")
    report = {
        "recipe": dataclasses.asdict(recipe), "versions": recipe.versions(),
        "params": model.num_parameters(), "documents": len(docs),
        "training_tokens": len(stream), "train_seconds": round(seconds),
    }  # fmt: skip
    (partial / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # a build of the same settings left unfinished
    partial.rename(folder)
    return folder


def _untrained_model(recipe: Recipe):
    from transformers import AutoModelForCausalLM

    config = family_config(
        recipe.family, recipe.num_layers, recipe.vocab_size,
        {
            "hidden_size": recipe.hidden_size, "intermediate_size": recipe.intermediate_size,
            "num_attention_heads": recipe.heads, "num_key_value_heads": recipe.kv_heads,
            "tie_word_embeddings": True,
        },
    )  # fmt: skip
    torch.manual_seed(recipe.training.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
