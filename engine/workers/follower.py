"""A follower of a multi-worker run: a replica that scores what the leader hands it.

It builds the same ``Pruning`` as the leader (the leader's request, calibration tokens and channel
order, broadcast), then obeys directives (engine/workers/directives.py) until told to stop. Between
two
candidates it looks for a new directive: a pause, an override or an undo on the leader reaches
every worker within one candidate.
"""

from __future__ import annotations

from dataclasses import replace

from ..search.pruning import Pruning
from ..search.run_request import RunRequest
from ..search.setup import build_pruning
from . import directives as dv
from .team import Team


class Follower:
    def __init__(self, team: Team, pruning: Pruning) -> None:
        self.team = team
        self.pruning = pruning
        self._seq = 0  # directives read
        self._sent = 0  # results sent
        self._version = 0  # changes applied

    def run(self) -> None:
        """Obey directives until an EndRun."""
        while True:
            directive = self._next()
            if isinstance(directive, dv.EndRun):
                self.team.put(dv.left_key(self.team.rank), True)
                return
            self._obey(directive)

    def _next(self) -> dv.Directive:
        """The next directive, waiting for it in the store (no polling while idle)."""
        key = dv.op_key(self.team.rank, self._seq)
        self._seq += 1
        return self.team.take(key)

    def _waiting(self) -> bool:
        return self.team.has(dv.op_key(self.team.rank, self._seq))

    def _obey(self, directive: dv.Directive) -> None:
        pruning = self.pruning
        if isinstance(directive, dv.Score):
            self._score(directive)
        elif isinstance(directive, dv.Commit):
            pruning.commit(
                pruning.structure_from_id(directive.structure), directive.score, directive.chosen_by
            )
            self._report_checksum()
        elif isinstance(directive, dv.UndoCommit):
            pruning.undo()
            self._report_checksum()
        elif isinstance(directive, dv.Order):
            pruning.settings = pruning.settings.with_order(directive.order)
        # Hold: nothing is being scored between directives, so there is nothing to stop

    def _score(self, directive: dv.Score) -> None:
        pruning = self.pruning
        candidates = pruning.eligible(directive.dimension)
        if tuple(c.id for c in candidates) != directive.ids:  # replicas agree (checksums)
            raise RuntimeError(
                f"rank {self.team.rank} sees other {directive.dimension} candidates than rank 0"
            )
        while not self._waiting():  # a newer directive (a pause, a change) ends this step
            position = self.team.claim(dv.claim_key(directive.gen))
            if position >= len(directive.queue):
                return
            index = directive.queue[position]
            score = pruning.score_candidate(candidates[index])
            result = dv.Result(directive.gen, index, score)
            self.team.put(dv.score_key(self.team.rank, self._sent), result)
            self._sent += 1

    def _report_checksum(self) -> None:
        self._version += 1
        key = dv.sum_key(self.team.rank, self._version)
        self.team.put(key, dv.model_checksum(self.pruning.model))


def on_replica_device(request: RunRequest, team: Team, gpus_per_worker: int) -> RunRequest:
    """``request`` placed on this worker's device, or spread over its GPUs by a device map."""
    if gpus_per_worker > 1:
        return replace(request, device=None, device_map="auto")
    return replace(request, device=str(team.device), device_map=None)


def follow(team: Team, gpus_per_worker: int = 1) -> int:
    """A follower's whole life: take the leader's request, build the replica, obey, leave.

    Exit status 2 when the leader found the request unusable (it said why), else 0.
    """
    request = team.broadcast(None)
    if request is None:
        return 2
    request = replace(
        on_replica_device(request, team, gpus_per_worker),
        order_file=None,  # the leader's order arrives by broadcast
        cache_dir=None,
    )
    pruning = build_pruning(request, lambda event: None, team=team)
    Follower(team, pruning).run()
    return 0
