"""Generation speed of a model, in llama.cpp and in transformers: what pruning buys.

Each measurement times the two phases of serving separately, because pruning changes them
differently: evaluating the prompt (one batched forward, bound by arithmetic) and generating
greedily one token at a time (one forward per token, bound by reading the weights). Both are
reported in tokens per second, the median over repeats, so one slow repeat (a page fault, another
process) does not move the number.

Torch and llama.cpp are imported inside the functions: importing this module is free, and a
benchmark that measures only one of the two needs only that one installed.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ["Speed", "alternating", "llama_cpp_speed", "median_speed", "transformers_speed"]


@dataclass(frozen=True)
class Speed:
    """Tokens per second, medians over repeats."""

    prompt_tps: float  # prompt tokens evaluated per second (one batched forward)
    generate_tps: float  # new tokens generated per second (greedy, one forward each)


def median_speed(speeds: Sequence[Speed]) -> Speed:
    """Each phase's median on its own: the fastest prompt and the fastest generation need not
    come from the same repeat."""
    if not speeds:
        raise ValueError("no measurement to take the median of")
    return Speed(
        statistics.median(speed.prompt_tps for speed in speeds),
        statistics.median(speed.generate_tps for speed in speeds),
    )


def _rate(tokens: int, seconds: float) -> float:
    """Tokens per second; a phase too short for the clock counts as one nanosecond."""
    return tokens / max(seconds, 1e-9)


def _check(prompt_ids: Sequence[int], new_tokens: int, repeats: int) -> None:
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    if new_tokens < 1 or repeats < 1:
        raise ValueError(f"new_tokens ({new_tokens}) and repeats ({repeats}) must be at least 1")


def llama_cpp_speed(
    gguf_path: Path,
    prompt_ids: list[int],
    new_tokens: int,
    *,
    repeats: int = 3,
    threads: int = 1,
) -> Speed:
    """The GGUF file's speed in llama.cpp (through llama-cpp-python), loaded once.

    After one untimed pass (first-use costs are not speed), per repeat the context is reset,
    the prompt evaluated in one batch (timed), then ``new_tokens`` tokens are generated
    greedily, each sampled and evaluated in turn (timed).
    The prompt is given as token ids so that llama.cpp and transformers see the same tokens.
    ``threads`` is used for both phases: a fair comparison fixes it.
    """
    _check(prompt_ids, new_tokens, repeats)
    from llama_cpp import Llama

    with _quiet_llama_cpp():
        llm = Llama(
            str(gguf_path),
            n_ctx=len(prompt_ids) + new_tokens + 1,
            n_batch=len(prompt_ids),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    try:
        # Untimed first: the weights are mapped from the file and read on first use, and the
        # compute buffers are sized on the first batch of each shape.
        llm.reset()
        llm.eval(prompt_ids)
        llm.eval([llm.sample(temp=0.0)])
        speeds = []
        for _ in range(repeats):
            llm.reset()
            started = time.perf_counter()
            llm.eval(prompt_ids)
            prompt_s = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(new_tokens):
                llm.eval([llm.sample(temp=0.0)])
            generate_s = time.perf_counter() - started
            speeds.append(Speed(_rate(len(prompt_ids), prompt_s), _rate(new_tokens, generate_s)))
    finally:
        llm.close()
    return median_speed(speeds)


@contextlib.contextmanager
def _quiet_llama_cpp() -> Iterator[None]:
    """llama.cpp's log silenced while a file loads.

    llama-cpp-python's ``verbose=False`` still lets warnings through (it maps llama.cpp's
    warning level onto Python's errors), and a pruned model's uneven layers always draw one
    about padding the V cache: noise between the progress lines, not news. A failed load still
    raises. The library's own log callback is put back afterwards.
    """
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    silent = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(silent, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def transformers_speed(
    model: Any, prompt_ids: list[int], new_tokens: int, *, repeats: int = 3
) -> Speed:
    """The model's speed in torch, on the device it sits on, with its KV cache.

    After one untimed pass (lazy initialisation, allocator warm-up, CUDA kernels chosen), per
    repeat: one forward of the whole prompt (timed: the prompt speed), then ``new_tokens``
    greedy steps, each one forward of the last token against the cache (timed). The explicit
    loop, rather than ``generate``, times exactly what llama.cpp is timed on, with no stopping
    criteria or logits processors in between; a pruned model's removed attention keeps the
    cache's length right (see ``pruned_modeling.RemovedAttention``).
    """
    _check(prompt_ids, new_tokens, repeats)
    import torch

    device = next(model.parameters()).device

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    prompt = torch.tensor([prompt_ids], device=device)
    cache_keyword = _cache_keyword(model)
    speeds = []
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(dim=-1)
        model(input_ids=token, use_cache=True, **{cache_keyword: _cache_of(out)})
        for _ in range(repeats):
            synchronize()
            started = time.perf_counter()
            out = model(input_ids=prompt, use_cache=True)
            synchronize()
            prompt_s = time.perf_counter() - started
            token = out.logits[:, -1:].argmax(dim=-1)
            started = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=token, use_cache=True, **{cache_keyword: _cache_of(out)})
                token = out.logits[:, -1:].argmax(dim=-1)
            synchronize()
            generate_s = time.perf_counter() - started
            speeds.append(Speed(_rate(len(prompt_ids), prompt_s), _rate(new_tokens, generate_s)))
    return median_speed(speeds)


def _cache_keyword(model: Any) -> str:
    """The forward's name for the KV cache: ``cache`` in recent transformers 5 releases,
    ``past_key_values`` before (and deprecated since)."""
    forward = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def alternating(measures: Mapping[K, Callable[[], Speed]], rounds: int) -> dict[K, Speed]:
    """Each subject's median over ``rounds`` measurements taken in turn, never in a block.

    Measuring a dense and a pruned model one after the other would charge whatever changes
    over time (clock boost, heat, a neighbour's load) to one of them; taking turns spreads it
    over both. Round ``r`` starts at subject ``r`` (mod their number) and goes round once, so
    no subject is always measured first (equally often in each place when ``rounds`` is a
    multiple of their number). The result keeps the order of
    ``measures``; its keys are any hashable names (a string, a tuple of what varies).
    """
    if rounds < 1:
        raise ValueError(f"rounds ({rounds}) must be at least 1")
    names = list(measures)
    taken: dict[K, list[Speed]] = {name: [] for name in names}
    for round_index in range(rounds):
        start = round_index % len(names) if names else 0
        for name in names[start:] + names[:start]:
            taken[name].append(measures[name]())
    return {name: median_speed(speeds) for name, speeds in taken.items()}
