"""What a caller may ask of a running engine: frozen values put on a thread-safe queue.

The engine reads the queue between candidate evaluations (and at once while paused or waiting),
so each command takes effect within one candidate evaluation. docs/engine.md has the table of
what each command does in each state. Plain values only: importing this loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..output.eval_request import EvalRequest
from ..recovery.settings import RecoverySettings


@dataclass(frozen=True)
class Command:
    """Base of all commands."""


class Outcome(Enum):
    """What handling a command did to the run."""

    NOTHING = "nothing"  # no change the step in progress cares about
    CHANGED = "changed"  # the model changed (a commit or an undo): the step starts afresh
    STOP = "stop"  # the run ends here


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class Override(Command):
    """Commit this structure next instead of the engine's choice (``L3.mlp``, ``L7.heads``)."""

    structure: str


@dataclass(frozen=True)
class Accept(Command):
    """Guided mode: commit the engine's proposal."""


@dataclass(frozen=True)
class SetOrder(Command):
    """New order of the dimensions, applied from the next step; shares move with them."""

    order: tuple[str, ...]


@dataclass(frozen=True)
class SetGuided(Command):
    guided: bool


@dataclass(frozen=True)
class Undo(Command):
    pass


@dataclass(frozen=True)
class Stop(Command):
    pass


#: What an Export writes: a transformers checkpoint folder, or one GGUF file llama.cpp runs.
EXPORT_FORMATS = ("safetensors", "gguf")


@dataclass(frozen=True)
class Export(Command):
    """Write the model as pruned so far to ``path``: a checkpoint folder (``engine.export``),
    or with ``format="gguf"`` one ``.gguf`` file (``engine.gguf_export``) whose weights are
    stored as ``gguf_type`` (``f32``, ``f16``, ``bf16``, ``q8_0``; None: the weights' own
    precision). The engine refuses other values with a Notice; a client that predates the
    two fields sends neither and gets the folder it always got."""

    path: str
    format: str = "safetensors"
    gguf_type: str | None = None


@dataclass(frozen=True)
class Evaluate(Command):
    """Score the dense and the pruned model with ``request`` (dense results are reused)."""

    request: EvalRequest


@dataclass(frozen=True)
class Recover(Command):
    """After the search: fine-tune the pruned model with LoRA (docs/method.md §10); Pause,
    Resume, Stop, Export and Evaluate then act on the recovery."""

    settings: RecoverySettings
