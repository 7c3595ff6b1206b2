"""The settings of one pruning run, validated once, with the reference defaults
(docs/method.md §3).

Validation lives here (not in the CLI) so the library API and the CLI reject the same input
with the same one-line messages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..defaults import (
    COMPILE_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPILE,
    DEFAULT_DISTRIBUTION,
    DEFAULT_FAST_MARGIN,
    DEFAULT_FAST_TOLERANCE,
    DEFAULT_NSAMPLES,
    DEFAULT_ORDER,
    DEFAULT_SEED,
    DEFAULT_SEQLEN,
    DEFAULT_TEXT_FIELD,
)
from ..errors import BadInput, Message, Part, setting
from .methods import DEFAULT_METHOD, FAITHFUL_MODES, method_named
from .structures import DIMENSIONS, Dimension


@dataclass(frozen=True)
class CalibrationSpec:
    """Where the calibration text comes from and how it is cut (recorded in plan.json)."""

    source: str
    nsamples: int = 0
    seqlen: int = 2048
    seed: int = 42
    text_field: str = "text"

    def to_dict(self) -> dict:
        """Plain values, so plan.json can record and rebuild the spec."""
        return asdict(self)


#: Reference group sizes (MLP channels, attention query channels) by model name (docs/method.md §3).
REFERENCE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("llama-2-7b", 1024, 128),
    ("llama-2-13b", 1024, 128),
    ("qwen1.5-7b", 1024, 128),
    ("qwen1.5-14b", 2048, 128),
    ("llama-3.1-8b", 1024, 512),
    ("meta-llama-3.1-8b", 1024, 512),
    ("llama-3-8b", 1024, 512),
    ("meta-llama-3-8b", 1024, 512),
    ("llama-3.2-3b", 768, 384),
    ("qwen2.5-7b", 1024, 896),
)

#: The calibration the reference drew its rows from; faithful mode's default (docs/method.md §9).
FAITHFUL_CALIBRATION = "tatsu-lab/alpaca"


@dataclass(frozen=True)
class GroupSizes:
    """Channels one width step removes, and where the numbers came from (a load note, in the
    words of whoever reads it: the settings given are named)."""

    mlp: int
    attn: int
    source: Message


def reference_group_sizes(name_or_path: str) -> tuple[int, int] | None:
    """The authors' group sizes when ``name_or_path`` names a model they pruned."""
    name = name_or_path.rstrip("/").split("/")[-1].lower()
    for key, mlp, attn in REFERENCE_GROUPS:
        if name == key or name.startswith(key + "-") or name == key + "-hf":
            return mlp, attn
    return None


def resolve_group_sizes(
    name_or_path: str,
    intermediate_size: int,
    attn_group_channels: int,
    mlp_group: int | None,
    attn_group: int | None,
) -> GroupSizes:
    """Explicit sizes win; then the reference's; else ~9% of the MLP width and one KV group."""
    reference = reference_group_sizes(name_or_path)
    given = _given(mlp_group, attn_group)
    if reference:
        return GroupSizes(
            mlp_group if mlp_group is not None else reference[0],
            attn_group if attn_group is not None else reference[1],
            Message.of("reference defaults for this model", given),
        )
    rule_mlp = max(1, round(0.09 * intermediate_size))
    mlp = mlp_group if mlp_group is not None else rule_mlp
    attn = attn_group if attn_group is not None else attn_group_channels
    if mlp_group and attn_group:
        return GroupSizes(mlp, attn, Message.of("given"))
    return GroupSizes(mlp, attn, Message.of("rule: ~9% of the MLP width, one KV group", given))


def _given(mlp_group: int | None, attn_group: int | None) -> Message:
    """`` (mlp_group, attn_group given)``: the group sizes the user gave, by name; or nothing."""
    given = [
        setting(name)
        for name, size in (("mlp_group", mlp_group), ("attn_group", attn_group))
        if size
    ]
    if not given:
        return Message()
    return Message.of(" (", given[0], *(Message.of(", ", named) for named in given[1:]), " given)")


def parse_distribution(text: str | None, count: int = 3) -> tuple[float, ...]:
    """``44:52:4`` -> shares normalised to 1; non-negative numbers with a positive sum.
    None or empty: :data:`DEFAULT_DISTRIBUTION`."""
    text = text or DEFAULT_DISTRIBUTION
    parts = text.replace(",", ":").split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BadInput(
            setting("distribution"),
            f" '{text}' must be numbers separated by ':' (e.g. {DEFAULT_DISTRIBUTION})",
        ) from None
    if len(values) != count:
        raise BadInput(
            setting("distribution"), f" '{text}' needs {count} shares, one per dimension"
        )
    if any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise BadInput(
            setting("distribution"), f" '{text}' must be non-negative numbers with a positive sum"
        )
    total = sum(values)
    return tuple(v / total for v in values)


def parse_order(text: str | list[str] | tuple[str, ...]) -> tuple[Dimension, ...]:
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    for name in names:
        if name not in DIMENSIONS:
            raise BadInput(f"unknown dimension '{name}'; use {', '.join(DIMENSIONS)}")
    if sorted(names) != sorted(DIMENSIONS):
        raise BadInput(setting("order"), f" must name each of {', '.join(DIMENSIONS)} exactly once")
    return tuple(names)  # type: ignore[return-value]


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides the plan. ``shares`` maps each dimension to its share of ``T``."""

    target_ratio: float
    order: tuple[Dimension, ...] = DEFAULT_ORDER
    shares: dict[str, float] = field(
        default_factory=lambda: dict(
            zip(DEFAULT_ORDER, parse_distribution(DEFAULT_DISTRIBUTION), strict=True)
        )
    )
    calibration: CalibrationSpec = field(
        default_factory=lambda: CalibrationSpec(
            source="",
            nsamples=DEFAULT_NSAMPLES,
            seqlen=DEFAULT_SEQLEN,
            seed=DEFAULT_SEED,
            text_field=DEFAULT_TEXT_FIELD,
        )
    )
    batch_size: int | None = DEFAULT_BATCH_SIZE
    mlp_group: int | None = None
    attn_group: int | None = None
    block_count: int | None = None
    prefix_cache: bool = True
    compile: str = DEFAULT_COMPILE
    fast: bool = False
    fast_margin: float = DEFAULT_FAST_MARGIN
    fast_tolerance: float = DEFAULT_FAST_TOLERANCE
    faithful: str | None = None
    guided: bool = False
    method: str = DEFAULT_METHOD

    def __post_init__(self) -> None:
        if not (0.0 < self.target_ratio < 1.0):
            raise BadInput(
                setting("target_ratio"), f" {self.target_ratio} must be strictly between 0 and 1"
            )
        parse_order(self.order)
        _positive_int(setting("seqlen"), self.calibration.seqlen)
        for named, value in (
            (setting("mlp_group"), self.mlp_group),
            (setting("attn_group"), self.attn_group),
            (setting("batch_size"), self.batch_size),
            (setting("block_count"), self.block_count),
        ):
            if value is not None:
                _positive_int(named, value)
        if self.calibration.nsamples < 0:
            raise BadInput(
                setting("nsamples"), f" {self.calibration.nsamples} must be 0 (all) or more"
            )
        if self.compile not in COMPILE_MODES:
            raise BadInput(
                setting("compile"), f" '{self.compile}' must be one of {', '.join(COMPILE_MODES)}"
            )
        if self.faithful is not None and self.faithful not in FAITHFUL_MODES:
            raise BadInput(
                setting("faithful"),
                f" '{self.faithful}' must be one of {', '.join(FAITHFUL_MODES)}",
            )
        if not (math.isfinite(self.fast_margin) and self.fast_margin >= 0):
            raise BadInput(
                setting("fast_margin"), f" {self.fast_margin} must be a number of at least 0"
            )
        if not (0 <= self.fast_tolerance < 1):
            raise BadInput(
                setting("fast_tolerance"), f" {self.fast_tolerance} must be at least 0 and below 1"
            )
        if self.fast and self.faithful is not None:
            raise BadInput(
                setting("fast"),
                " cannot be used with ",
                setting("faithful"),
                f" {self.faithful}: the reference scores every candidate on every row",
            )
        method_named(self.method).check(
            faithful=self.faithful, fast=self.fast, block_count=self.block_count
        )
        if self.faithful is not None:
            method_named(self.faithful).check_faithful(self.block_count)

    @classmethod
    def with_distribution(
        cls,
        target_ratio: float,
        distribution: str | None,
        order: str | tuple = DEFAULT_ORDER,
        **kw,
    ) -> PruneSettings:
        """Build from CLI-style text: the distribution lists shares in the order of ``order``.

        Every method but MultiPruner prunes blocks only, so its distribution is ``blocks`` alone
        whatever was given (docs/method.md §11); ``--faithful blockpruner`` means the same.
        """
        dims = parse_order(order)
        if kw.get("faithful") and kw.get("method", DEFAULT_METHOD) == DEFAULT_METHOD:
            kw["method"] = kw["faithful"]  # a reference's faithful mode runs its method
        if not method_named(kw.get("method", DEFAULT_METHOD)).searches_widths:
            distribution = _only_blocks(dims)
        shares = parse_distribution(distribution)
        return cls(target_ratio, dims, dict(zip(dims, shares, strict=True)), **kw)

    def with_order(self, order: tuple[Dimension, ...]) -> PruneSettings:
        return replace(self, order=parse_order(order))

    def targets(self) -> dict[str, float]:
        """Cumulative ratio target of each dimension in the current order (docs/method.md §3)."""
        running, out = 0.0, {}
        for dim in self.order:
            running += self.shares[dim]
            out[dim] = self.target_ratio * min(running, 1.0)
        return out

    def to_dict(self) -> dict:
        data = asdict(self)
        data["order"] = list(self.order)
        data["distribution"] = [self.shares[d] for d in self.order]
        data["calibration"] = self.calibration.to_dict()
        return data


def _only_blocks(dims: tuple[str, ...]) -> str:
    return ":".join("1" if d == "blocks" else "0" for d in dims)


def _positive_int(named: Part, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadInput(named, f" {value} must be a positive whole number")
