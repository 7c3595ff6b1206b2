"""How one step's candidates are scored: all on every row, or by successive halving (``--fast``).

The exact search (docs/method.md §3) scores every candidate on every calibration row. The fast
search (docs/method.md §4, "Approximations") scores every candidate on a first slice of rows,
then, round after round, doubles the rows for the candidates that cannot be ruled out, until
the survivors have been scored on every row. A candidate is ruled out when, on the rows seen so
far, even ``margin`` standard errors of the paired difference in its favour (rows are shared, so
each row's own difficulty cancels out) would not make it better than the leader by more than
``tolerance`` (relative perplexity). With no tolerance that is "worse than the leader by more
than the margin"; the tolerance also rules out the near-ties that no subset of rows can tell
apart and that only cost rows (how common they are: bench/RESULTS.md, ``--fast``). Every
survivor ends with its exact score; the choice is the lowest of those. The leader is never
ruled out.

The rounds take contiguous ranges of rows, so batching and the prefix cache work as in the exact
search; :func:`spread_rows` puts the rows in a seeded random order once, when a fast ``Pruning`` is
built, so that each of those ranges is a random sample of the whole calibration set rather than
its first few documents.

Both searches yield one :class:`Evaluation` per scoring call, so the runner can read its command
queue between any two of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..defaults import DEFAULT_FAST_MARGIN, DEFAULT_FAST_TOLERANCE
from .structures import Structure

#: Share of the rows every candidate is scored on in the first round (at least FIRST_ROWS_MIN).
FIRST_ROWS_SHARE = 1 / 8
FIRST_ROWS_MIN = 4

#: Per-row NLLs of a candidate with the model as it is, for the given rows.
RowNll = Callable[[Structure, range], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """A candidate's score on its first ``rows`` rows, after scoring ``new_rows`` more of them;
    candidate ``k`` of the ``n`` in round ``round``."""

    candidate: Structure
    score: float
    rows: int
    total_rows: int
    new_rows: int
    round: int
    k: int
    n: int

    @property
    def fully_scored(self) -> bool:
        return self.rows == self.total_rows


def exhaustive(
    candidates: Sequence[Structure], row_nll: RowNll, total_rows: int
) -> Iterator[Evaluation]:
    """The exact search: every candidate on every row."""
    for k, candidate in enumerate(candidates, start=1):
        nll = row_nll(candidate, range(total_rows))
        yield Evaluation(candidate, perplexity(nll), total_rows, total_rows, total_rows, 1, k,
                         len(candidates))  # fmt: skip


def successive_halving(
    candidates: Sequence[Structure],
    row_nll: RowNll,
    total_rows: int,
    margin: float = DEFAULT_FAST_MARGIN,
    tolerance: float = DEFAULT_FAST_TOLERANCE,
) -> Iterator[Evaluation]:
    """The fast search: rounds of doubling rows over the candidates not yet ruled out."""
    seen = {c: torch.empty(0, dtype=torch.float64) for c in candidates}
    alive = list(candidates)
    rows, done, round_ = first_rows(total_rows), 0, 1
    while alive:
        for k, candidate in enumerate(alive, start=1):
            seen[candidate] = torch.cat([seen[candidate], row_nll(candidate, range(done, rows))])
            yield Evaluation(candidate, perplexity(seen[candidate]), rows, total_rows,
                             rows - done, round_, k, len(alive))  # fmt: skip
        if rows == total_rows:
            return
        kept = survivors({c: seen[c] for c in alive}, margin, rows, total_rows, tolerance)
        alive = [c for c in alive if c in kept]
        done, rows, round_ = rows, min(total_rows, 2 * rows), round_ + 1


def spread_rows(chunks: torch.Tensor, seed: int) -> torch.Tensor:
    """``chunks``' rows in a fixed order drawn from ``seed`` (the run's ``--seed``), for the fast
    search.

    In the calibration's own order neighbouring rows are consecutive pieces of one document, so
    a first round would see a few documents, whose rows agree with each other more than with the
    set: the standard error would understate how far they can be from the whole, and the margin
    would rule out the exact winner (bench/RESULTS.md, ``--fast``). A seeded order keeps a run
    reproducible and a resume on the same rows.
    """
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed))
    return chunks[order]


def first_rows(total_rows: int) -> int:
    return min(total_rows, max(FIRST_ROWS_MIN, math.ceil(total_rows * FIRST_ROWS_SHARE)))


def survivors(
    seen: dict[Structure, torch.Tensor],
    margin: float,
    rows: int,
    total_rows: int,
    tolerance: float = 0.0,
) -> set[Structure]:
    """The candidates not ruled out: those that ``margin`` standard errors in their favour
    would make better than the leader by more than ``tolerance`` (relative perplexity; a
    difference of mean NLLs is a log perplexity ratio).

    The standard error of the mean paired difference carries the finite-population correction
    ``sqrt(1 - rows / total_rows)``: what is being estimated is the mean over the whole
    calibration set, which the rows seen are part of. A non-finite score never survives a
    finite leader (the exact search ranks it last).
    """
    means = {c: nll.mean().item() for c, nll in seen.items()}
    finite = [c for c, m in means.items() if math.isfinite(m)]
    if not finite:
        return set(seen)
    leader = min(finite, key=means.__getitem__)
    correction = math.sqrt(max(0.0, 1.0 - rows / total_rows))
    worth = -math.log1p(tolerance)  # how far below the leader a candidate must be able to go
    kept = {leader}
    for candidate in finite:
        difference = seen[candidate] - seen[leader]
        spread = difference.std().item() if rows > 1 else math.inf
        standard_error = spread / math.sqrt(rows) * correction
        if difference.mean().item() - margin * standard_error <= worth:
            kept.add(candidate)
    return kept


def perplexity(nll: torch.Tensor) -> float:
    return math.exp(nll.mean().item())
