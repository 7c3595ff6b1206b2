"""The removable things of docs/method.md §1 as small frozen values.

A :class:`Structure` names *what* is removed, never *how*: the adapters turn it into surgery.
Its ``id`` is stable text for the UI, logs and overrides (``L12.attn``, ``L7.mlp-1024``,
``L3.heads-128``); :func:`parse_structure_id` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["attn_block", "mlp_block", "mlp_channels", "attn_heads", "layer"]
Dimension = Literal["blocks", "mlp_channels", "attn_heads"]

DIMENSIONS: tuple[Dimension, ...] = ("blocks", "mlp_channels", "attn_heads")

_DIMENSION_OF_KIND: dict[str, Dimension] = {
    "attn_block": "blocks",
    "mlp_block": "blocks",
    "mlp_channels": "mlp_channels",
    "attn_heads": "attn_heads",
    "layer": "blocks",
}


@dataclass(frozen=True, order=False)
class Structure:
    """One removal. Width kinds carry how many channels go (``remove``) and stay (``width_after``).

    For ``attn_heads`` the channel counts are query channels, as in the plan file.
    """

    kind: Kind
    layer: int
    remove: int | None = None
    width_after: int | None = None

    @property
    def dimension(self) -> Dimension:
        return _DIMENSION_OF_KIND[self.kind]

    @property
    def is_block(self) -> bool:
        return self.kind in ("attn_block", "mlp_block")

    @property
    def parts(self) -> tuple[Structure, ...]:
        """What committing it commits, in order: a ``layer`` is a candidate of the layer methods
        only; the plan records its two sub-blocks (docs/method.md §11)."""
        if self.kind == "layer":
            return (Structure("attn_block", self.layer), Structure("mlp_block", self.layer))
        return (self,)

    @property
    def sub_block(self) -> int:
        """Index of the first residual sub-block it touches: ``2*layer`` (attention, or the whole
        layer) or ``2*layer+1``."""
        return 2 * self.layer + (0 if self.kind in ("attn_block", "attn_heads", "layer") else 1)

    @property
    def id(self) -> str:
        if self.kind == "layer":
            return f"L{self.layer}"
        if self.kind == "attn_block":
            return f"L{self.layer}.attn"
        if self.kind == "mlp_block":
            return f"L{self.layer}.mlp"
        if self.kind == "mlp_channels":
            return f"L{self.layer}.mlp-{self.remove}"
        return f"L{self.layer}.heads-{self.remove}"

    def to_dict(self) -> dict:
        out: dict = {"kind": self.kind, "layer": self.layer}
        if self.remove is not None:
            out["remove"] = self.remove
            out["width_after"] = self.width_after
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Structure:
        return cls(
            kind=data["kind"],
            layer=int(data["layer"]),
            remove=data.get("remove"),
            width_after=data.get("width_after"),
        )

    def __str__(self) -> str:
        return self.id


_ID_PATTERN = re.compile(r"^L(\d+)(?:\.(attn|mlp|heads)(?:-(\d+))?)?$")


def parse_structure_id(text: str) -> tuple[Kind, int]:
    """Read ``L12.attn`` / ``L7.mlp`` / ``L7.mlp-1024`` / ``L3.heads[-128]`` / ``L5`` (a whole
    layer) into (kind, layer).

    The channel count is not part of the identity: the engine decides how much one step removes.
    """
    match = _ID_PATTERN.match(text.strip())
    if not match:
        raise ValueError(
            f"'{text}' is not a structure id; use L<layer>.attn, L<layer>.mlp, "
            "L<layer>.mlp-<channels>, L<layer>.heads-<channels> or L<layer>"
        )
    layer, what, channels = int(match.group(1)), match.group(2), match.group(3)
    if what is None:
        return "layer", layer
    if what == "heads":
        return "attn_heads", layer
    if what == "mlp":
        return ("mlp_channels" if channels else "mlp_block"), layer
    return "attn_block", layer
