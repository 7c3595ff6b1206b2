"""Where the model to recover comes from: a session (its plan re-applied to the dense model, as
``mptui export`` does) or an export folder (loaded as it is)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import BadInput
from ..model.loading import load_model
from ..model.rebuild import rebuild_pruned
from ..output.export import is_export
from ..search.plan import Plan, read_plan_file
from ..session.files import PLAN, SETTINGS
from ..session.folder import SessionFolder

if TYPE_CHECKING:
    from torch import nn

Progress = Callable[[int, int], None]
Kind = Literal["session", "export"]


@dataclass(frozen=True)
class RecoverySource:
    """A session or an export folder, and how to load it (``None``: the default for each; a
    session's default precision is the one its search ran in)."""

    kind: Kind
    path: Path
    dtype: str | None = None
    device: str | None = None
    device_map: str | None = None  # this run's only (a resume's --device-map): never saved

    @classmethod
    def find(cls, path: Path) -> RecoverySource:
        """What ``path`` is; anything else is one clear line."""
        path = Path(path).expanduser()
        if (path / SETTINGS).is_file() and (path / PLAN).is_file():
            return cls("session", path)
        if is_export(path):
            return cls("export", path)
        raise BadInput(f"'{path}' is neither an mptui session nor an mptui export (no plan.json)")

    @property
    def is_session(self) -> bool:
        return self.kind == "session"

    def loaded_as(self, dtype: str | None, device: str | None) -> RecoverySource:
        return replace(self, dtype=dtype, device=device)

    def on_device(self, device: str | None, device_map: str | None) -> RecoverySource:
        """Loaded on ``device`` or by ``device_map`` when either is given (a resume after the
        first device failed), else where the recovery started; as the search's ``--resume``
        replaces both, a device map alone loads by that map, not on the saved device."""
        if device is None and device_map is None:
            return self
        return replace(self, device=device, device_map=device_map)

    def to_dict(self) -> dict:
        """As the recovery's settings file keeps it: ``{"session"|"export": PATH, "dtype": ...,
        "device": ...}``."""
        return {self.kind: str(self.path), "dtype": self.dtype, "device": self.device}

    @classmethod
    def from_dict(cls, data: dict) -> RecoverySource:
        kind: Kind = "session" if "session" in data else "export"
        return cls(kind, Path(data[kind]), data.get("dtype"), data.get("device"))

    def read_plan(self) -> Plan:
        """The plan of the source; a plan that removed nothing has nothing to recover."""
        plan = read_plan_file(self.path / PLAN)
        if not plan.steps:
            raise BadInput(
                f"'{self.path}' removed nothing (its plan has no steps): nothing to recover"
            )
        return plan

    def model_name(self) -> str:
        """What the pruned model was loaded from: the session's model, or the export itself."""
        return self.read_plan().model.name_or_path if self.is_session else str(self.path)

    def load(self, on_shard: Progress | None = None) -> tuple[nn.Module, Any, Plan]:
        """``(model, tokenizer, plan)``: the pruned model as the search left it."""
        plan = self.read_plan()
        if self.is_session:
            order_file = SessionFolder(self.path).order_file
            load = functools.partial(rebuild_pruned, plan, order_file)
        else:
            load = functools.partial(load_model, str(self.path))
        model, tokenizer = load(
            dtype=self.dtype, device=self.device, device_map=self.device_map, on_shard=on_shard
        )
        return model, tokenizer, plan
