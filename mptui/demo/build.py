"""Build the bundled demo model: ``python -m mptui.demo.build`` (deterministic, offline).

The text is what every Python installation carries: the standard library's docstrings and the
pydoc topics (about 2M characters). From it we train a byte-level BPE tokenizer and a small
Llama with grouped-query attention, long enough that removing different residual sub-blocks
changes perplexity very unevenly — which is what makes a pruning demo worth watching.
Everything is seeded; the step count is a constant, not a time budget.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import pkgutil
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).parent
SEED = 1234
VOCAB = 2048
SEQLEN = 128
BATCH = 16
STEPS = 1200
LEARNING_RATE = 4e-3
WARMUP = 50
VALIDATION_SHARE = 0.05
MAX_TEXT_CHARS = 2_400_000

#: Modules with side effects on import (a browser, a window, printing) or none worth reading.
SKIP_MODULES = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "pydoc_data",
    "__main__",
    "ensurepip",
    "venv",
    "lib2to3",
    "test",
    "unittest",
    "sre_compile",
    "sre_constants",
    "sre_parse",
    "xxsubtype",
    "xxlimited",
}


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        rms_norm_eps=1e-5,
    )


# --- text ---------------------------------------------------------------------------------
def _clean(doc: str) -> str:
    """One paragraph block per document: internal blank lines would split it at load."""
    return re.sub(r"\n\s*\n", "\n", doc.strip())


def _import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:
        return None


def _submodules(name: str) -> list[str]:
    """A package and its public submodules (``email.message``, ``xml.etree.ElementTree``)."""
    module = _import(name)
    if module is None:
        return []
    names = [name]
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=name + "."):
        if not any(part.startswith("_") or part == "tests" for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _own(member, name: str) -> bool:
    """Defined by this module or its C accelerator (``_collections`` for ``collections``)."""
    owner = getattr(member, "__module__", None) or ""
    return owner == name or owner == "_" + name.rsplit(".", 1)[-1]


def _module_docs(name: str) -> list[str]:
    module = _import(name)
    if module is None:
        return []
    docs = [inspect.getdoc(module) or ""]
    for member_name, member in sorted(vars(module).items()):
        if member_name.startswith("_") or not _own(member, name):
            continue
        if inspect.isclass(member) or inspect.isroutine(member):
            docs.append(inspect.getdoc(member) or "")
        if inspect.isclass(member):
            for attr, value in sorted(vars(member).items()):
                if not attr.startswith("_") and inspect.isroutine(value):
                    docs.append(inspect.getdoc(value) or "")
    return docs


def package_docstrings(names: list[str]) -> list[str]:
    """The docstrings of packages ``names`` and their public submodules, in that order."""
    raw = []
    for name in names:
        for module_name in _submodules(name):
            raw.extend(_module_docs(module_name))
    return raw


def distinct_documents(raw: list[str], seed: int = SEED) -> list[str]:
    """Each document of at least 80 characters once, in a seeded order."""
    seen, out = set(), []
    for doc in map(_clean, raw):
        if len(doc) >= 80 and doc not in seen:
            seen.add(doc)
            out.append(doc)
    random.Random(seed).shuffle(out)
    return out


def documents() -> list[str]:
    """Docstrings and pydoc topics, deduplicated, in a seeded order."""
    from pydoc_data.topics import topics

    names = sorted(
        n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP_MODULES
    )
    raw = [topics[key] for key in sorted(topics)]
    return distinct_documents(raw + package_docstrings(names))


def write_text(
    docs: list[str],
    out: Path = HERE,
    validation_share: float = VALIDATION_SHARE,
    max_chars: int = MAX_TEXT_CHARS,
) -> tuple[Path, Path]:
    """``calibration.txt`` (the training text, at most ``max_chars``) and ``validation.txt``
    (the first ``validation_share`` of the documents, never trained on) in ``out``."""
    cut = max(1, int(len(docs) * validation_share))
    validation, calibration = docs[:cut], docs[cut:]
    total, kept = 0, []
    for doc in calibration:
        total += len(doc)
        if total > max_chars:
            break
        kept.append(doc)
    calibration_path, validation_path = out / "calibration.txt", out / "validation.txt"
    calibration_path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    validation_path.write_text("\n\n".join(validation) + "\n", encoding="utf-8")
    return calibration_path, validation_path


# --- tokenizer and model --------------------------------------------------------------------
def train_tokenizer(text_path: Path, vocab_size: int = VOCAB):
    from .tokenizer import train_byte_level_bpe

    return train_byte_level_bpe(vocab_size, files=[str(text_path)])


def token_stream(tokenizer, path: Path) -> torch.Tensor:
    return torch.tensor(tokenizer(path.read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)


@dataclass(frozen=True)
class Training:
    """How a model is trained on a token stream: the demo's by default (bench/trained.py
    trains its benchmark model with other values)."""

    steps: int = STEPS
    batch: int = BATCH
    seqlen: int = SEQLEN
    learning_rate: float = LEARNING_RATE
    warmup: int = WARMUP
    seed: int = SEED

    def rate(self, step: int) -> float:
        """Linear warm-up, then a cosine decay to a tenth of the peak."""
        if step < self.warmup:
            return self.learning_rate * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, stream: torch.Tensor, log, training: Training = Training()) -> float:
    """Train ``model`` on random windows of ``stream``; the seconds it took."""
    steps, batch_size, seqlen = training.steps, training.batch, training.seqlen
    generator = torch.Generator().manual_seed(training.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=0.1)
    model.train()
    started = time.monotonic()
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seqlen - 1, (batch_size,), generator=generator)
        batch = torch.stack([stream[s : s + seqlen] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = training.rate(step)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}/{steps} loss {loss.item():.3f} {time.monotonic() - started:.0f}s")
    model.eval()
    return time.monotonic() - started


# --- evaluation ---------------------------------------------------------------------------------
def evaluate(model_dir: Path, validation: Path) -> dict:
    """Validation perplexity, and the perplexity with each single sub-block removed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mptui.engine.api import Scorer, Structure, adapter_for, split_documents, tokenize_chunks

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chunks = tokenize_chunks(tokenizer, split_documents(validation.read_text()), SEQLEN)
    adapter = adapter_for(model)
    scorer = Scorer(model, adapter, chunks, batch_size=8)
    removal = {}
    for kind in ("attn_block", "mlp_block"):
        for layer in range(adapter.num_layers):
            structure = Structure(kind, layer)
            with adapter.trial(structure):
                removal[structure.id] = round(scorer.score(structure.sub_block), 2)
    return {
        "val_ppl": round(scorer.score(), 2),
        "block_removal_ppl": removal,
        "val_tokens": chunks.numel(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "model")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)

    def log(text: str) -> None:
        print(text, flush=True)

    docs = documents()
    calibration, validation = write_text(docs)
    log(f"{len(docs)} documents; calibration {calibration.stat().st_size:,} bytes")
    tokenizer = train_tokenizer(calibration)
    stream = token_stream(tokenizer, calibration)
    log(f"{len(stream):,} training tokens")

    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(model_config())
    seconds = train(model, stream, log)
    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    report = {
        "params": model.num_parameters(),
        "size_bytes": sum(f.stat().st_size for f in args.out.iterdir()),
        "steps": STEPS,
        "batch": BATCH,
        "seqlen": SEQLEN,
        "train_seconds": round(seconds),
        **evaluate(args.out, validation),
    }
    (args.out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    removal = report["block_removal_ppl"]
    log(f"val ppl {report['val_ppl']}; removal {min(removal.values())} .. {max(removal.values())}")
    for name, value in removal.items():
        log(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
