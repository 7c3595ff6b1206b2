"""The plan (docs/method.md §8) as typed values, and its file: written atomically, read back
with its format checked.

:class:`Plan` and :class:`PlanStep` are what the engine, the summary, export, evaluation and
the app work with; :meth:`Plan.to_dict` is exactly the JSON of ``plan.json`` (docs/engine.md),
and keys this version does not know survive a round trip in ``extra``. Events carry
:class:`PlanStep` (``StepCommitted.step``, ``Loaded.steps``) and the wire and the event log
write it as :meth:`PlanStep.to_dict`; ``Finished.plan`` stays the plan's JSON. Torch-free, so
the app, ``mptui attach`` and tools can read plans and events cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..session.disk import write_json_atomic
from .structures import Dimension, Structure

PLAN_FORMAT = "mptui.plan/1"
_FORMAT_PATTERN = re.compile(r"^mptui\.plan/(\d+)$")
_VERSION = 1
_KINDS = ("attn_block", "mlp_block", "mlp_channels", "attn_heads")
_STRUCTURE_KEYS = ("kind", "layer", "remove", "width_after")


@dataclass(frozen=True)
class PlanStep:
    """One committed removal, as in the plan's ``steps``; ``structure`` is a
    :class:`Structure` here and its dict in JSON, ``dimension`` follows from it."""

    index: int
    structure: Structure
    score: float
    params: int
    ratio: float
    chosen_by: str  # "engine" or "user"
    ratio_layers: float = 0.0
    seconds: float = 0.0
    candidates: int = 0
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    structure_extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of structure

    _KEYS = (
        "index", "dimension", "structure", "score", "params", "ratio", "chosen_by",
        "ratio_layers", "seconds", "candidates", "tokens",
    )  # fmt: skip

    @property
    def dimension(self) -> Dimension:
        return self.structure.dimension

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "dimension": self.dimension,
            "structure": {**self.structure.to_dict(), **self.structure_extra},
            "score": self.score,
            "params": self.params,
            "ratio": self.ratio,
            "chosen_by": self.chosen_by,
            "ratio_layers": self.ratio_layers,
            "seconds": self.seconds,
            "candidates": self.candidates,
            "tokens": self.tokens,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PlanStep:
        """Raises KeyError, TypeError or ValueError on a step that is not one; the readers of
        files (:func:`read_plan_file`, the journal) turn those into one-line errors."""
        structure = Structure.from_dict(data["structure"])
        if structure.kind not in _KINDS:
            raise ValueError(f"unknown structure kind {structure.kind!r}")
        if not structure.is_block and not isinstance(structure.width_after, int):
            raise ValueError(f"{structure.kind} step {data['index']} has no width_after")
        return cls(
            index=int(data["index"]),
            structure=structure,
            score=float(data["score"]),
            params=int(data["params"]),
            ratio=float(data["ratio"]),
            chosen_by=str(data["chosen_by"]),
            ratio_layers=float(data.get("ratio_layers", 0.0)),
            seconds=float(data.get("seconds", 0.0)),
            candidates=int(data.get("candidates", 0)),
            tokens=int(data.get("tokens", 0)),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
            structure_extra={
                k: v for k, v in data["structure"].items() if k not in _STRUCTURE_KEYS
            },
        )

    def renumbered(self, index: int, params: int, ratio: float, ratio_layers: float) -> PlanStep:
        return replace(self, index=index, params=params, ratio=ratio, ratio_layers=ratio_layers)


@dataclass
class PlanModel:
    """The plan's ``model``: what was pruned and its dense geometry (``attn_width`` in query
    channels). ``architecture`` and ``dtype`` may be missing from hand-written plans."""

    name_or_path: str
    params_dense: int
    num_layers: int
    mlp_width: int
    attn_width: int
    architecture: str | None = None
    dtype: str | None = None  # the precision the search ran in
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = (
        "name_or_path", "architecture", "dtype", "params_dense", "num_layers", "mlp_width",
        "attn_width",
    )  # fmt: skip

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name_or_path": self.name_or_path}
        if self.architecture is not None:
            out["architecture"] = self.architecture
        if self.dtype is not None:
            out["dtype"] = self.dtype
        out.update(
            params_dense=self.params_dense, num_layers=self.num_layers,
            mlp_width=self.mlp_width, attn_width=self.attn_width,
        )  # fmt: skip
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict) -> PlanModel:
        return cls(
            name_or_path=str(data["name_or_path"]),
            params_dense=int(data["params_dense"]),
            num_layers=int(data["num_layers"]),
            mlp_width=int(data["mlp_width"]),
            attn_width=int(data["attn_width"]),
            architecture=data.get("architecture"),
            dtype=data.get("dtype"),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )


@dataclass
class Plan:
    """The whole plan. ``settings`` stays the plain dict the plan records (the run's settings
    plus the group sizes in use); ``extra`` holds top-level keys this version does not know."""

    model: PlanModel
    settings: dict[str, Any]
    dense_score: float
    steps: list[PlanStep] = field(default_factory=list)
    dense_scores: dict[str, float] = field(default_factory=dict)
    written: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("format", "model", "settings", "dense_score", "dense_scores", "steps", "written")

    @property
    def last(self) -> PlanStep | None:
        return self.steps[-1] if self.steps else None

    @property
    def ratio(self) -> float:
        """The ratio reached (0 before the first step)."""
        return self.steps[-1].ratio if self.steps else 0.0

    def layer_rows(self) -> list[LayerRow]:
        model = self.model
        return layer_rows(model.num_layers, model.mlp_width, model.attn_width, self.steps)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "model": self.model.to_dict(),
            "settings": self.settings,
            "dense_score": self.dense_score,
        }
        if self.dense_scores:
            out["dense_scores"] = self.dense_scores
        out["steps"] = [step.to_dict() for step in self.steps]
        if self.written is not None:
            out["written"] = self.written
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, source: str = "the plan") -> Plan:
        """Read a plan's JSON; on another format, a newer version or a damaged plan, raise
        :class:`BadInput` with one line that names ``source``."""
        check_format(data, source)
        try:
            plan = cls(
                model=PlanModel.from_dict(data["model"]),
                settings=dict(data.get("settings") or {}),
                dense_score=float(data["dense_score"]),
                steps=[PlanStep.from_dict(step) for step in data["steps"]],
                dense_scores=dict(data.get("dense_scores") or {}),
                written=data.get("written"),
                extra={k: v for k, v in data.items() if k not in cls._KEYS},
            )
            for step in plan.steps:
                if not 0 <= step.structure.layer < plan.model.num_layers:
                    raise ValueError(
                        f"step {step.index} names layer {step.structure.layer} of a "
                        f"{plan.model.num_layers}-layer model"
                    )
            return plan
        except KeyError as error:
            raise BadInput(f"{source} is damaged (no {error.args[0]!r})") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise BadInput(f"{source} is damaged ({_one_line(error)})") from None


def check_format(data: Any, source: str = "the plan") -> None:
    """One line on anything but ``mptui.plan/1``: another format, or a newer version."""
    if not isinstance(data, dict):
        raise BadInput(f"{source} is not an mptui plan (not a JSON object)")
    name = data.get("format")
    if name == PLAN_FORMAT:
        return
    if name is None:
        raise BadInput(f"{source} is not an mptui plan (no format)")
    match = _FORMAT_PATTERN.match(name) if isinstance(name, str) else None
    if match and int(match.group(1)) > _VERSION:
        raise BadInput(
            f"{source} was written by a newer mptui (format {name!r}); upgrade mptui to read it"
        )
    raise BadInput(f"{source} is not an mptui plan (format {_one_line(repr(name))})")


def as_plan(plan: Plan | dict) -> Plan:
    """A :class:`Plan` from a Plan or its JSON (what ``Finished.plan`` and ``prune()`` give)."""
    return plan if isinstance(plan, Plan) else Plan.from_dict(plan)


def read_plan_file(path: Path) -> Plan:
    """The one reader of ``plan.json`` files (a session's, an export's): every failure is a
    :class:`BadInput` of one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist") from None
    except OSError as error:
        raise BadInput(f"{path} cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not an mptui plan (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{path} is damaged ({error})") from None
    return Plan.from_dict(data, source=str(path))


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


# --- per-layer rows ---------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One decoder layer after some steps: which sub-blocks are gone and how many channels each
    kept (``attn_width`` in query channels). The summary's table and the app's *Removed per
    layer* pane are both these rows."""

    layer: int
    attn_removed: bool = False
    mlp_removed: bool = False
    mlp_width: int = 0
    attn_width: int = 0


def layer_rows(
    num_layers: int, mlp_width: int, attn_width: int, steps: Iterable[PlanStep]
) -> list[LayerRow]:
    """The rows of a model of ``num_layers`` dense layers (``mlp_width``, ``attn_width`` wide)
    after ``steps``, in order."""
    rows = [LayerRow(i, mlp_width=mlp_width, attn_width=attn_width) for i in range(num_layers)]
    for step in steps:
        structure = step.structure
        row = rows[structure.layer]
        if structure.kind == "attn_block":
            row.attn_removed = True
        elif structure.kind == "mlp_block":
            row.mlp_removed = True
        elif structure.kind == "mlp_channels":
            row.mlp_width = structure.width_after
        else:
            row.attn_width = structure.width_after
    return rows


def write_plan(path: Path, plan: Plan) -> None:
    write_json_atomic(path, plan.to_dict())
