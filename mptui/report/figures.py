"""The report's figures, drawn with matplotlib's object API.

No pyplot and no ``matplotlib.use``: each figure is a :class:`matplotlib.figure.Figure` on its
own Agg canvas, drawn under matplotlib's default style (a user's matplotlibrc changes nothing)
with a fixed SVG hash salt and no dates, so the same comparison always gives the same bytes.
matplotlib is imported inside the functions that draw: importing this module costs nothing, and
``mptui --help`` never pays for it.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from mptui.engine.api import Comparison, Plan

PERPLEXITY = "perplexity"
LAYERS = "layers"

#: Curve colours, one per session in order (matplotlib's tab10, spelled out so the page can
#: show the same colour beside each name without importing matplotlib).
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
LINESTYLES = ("-", "--", "-.", ":")
#: Above this ratio of largest to smallest perplexity on the plot, the y axis is logarithmic.
LOG_SPREAD = 10.0
_SALT = "mptui-report"  # svg.hashsalt: the SVG's ids come out the same on every render
_RC = {
    "svg.hashsalt": _SALT,
    "svg.fonttype": "path",  # glyphs as paths: the figure looks the same in every browser
    "pdf.fonttype": 42,  # TrueType in the PDF: its text stays text for a paper's editor
    "font.size": 10,
}


@dataclass(frozen=True)
class Curve:
    """One session's perplexity after each step, from the dense model (ratio 0) on."""

    label: str
    colour: str
    linestyle: str
    ratios: list[float]
    perplexities: list[float]


@dataclass(frozen=True)
class DrawnFigure:
    """One figure, ready for the page (``svg``, inline) and for a paper (``png``, ``pdf``)."""

    name: str  # PERPLEXITY or LAYERS: the files are STEM-NAME.png and STEM-NAME.pdf
    title: str
    caption: str
    svg: str
    png: bytes
    pdf: bytes


def session_style(index: int) -> tuple[str, str]:
    """The colour and line style of the ``index``-th session (0-based)."""
    return COLOURS[index % len(COLOURS)], LINESTYLES[(index // len(COLOURS)) % len(LINESTYLES)]


def session_label(name: str, method: str) -> str:
    return f"{name} ({method})"


def curves(comparison: Comparison) -> list[Curve]:
    """Each session's curve: ``(0, plan.dense_score)``, then ``(step.ratio, step.score)``."""
    found = []
    for index, session in enumerate(comparison.sessions):
        plan = session.plan
        colour, linestyle = session_style(index)
        found.append(
            Curve(
                label=session_label(session.scores.name, session.scores.method),
                colour=colour,
                linestyle=linestyle,
                ratios=[0.0, *(step.ratio for step in plan.steps)],
                perplexities=[plan.dense_score, *(step.score for step in plan.steps)],
            )
        )
    return found


def layer_shares(plan: Plan) -> tuple[list[float], list[float]]:
    """Per layer, the share of its attention and of its MLP that the plan removed: 1 for a
    removed block, else the channels removed over the dense width."""
    model = plan.model
    attention, mlp = [], []
    for row in plan.layer_rows():
        attention.append(1.0 if row.attn_removed else _removed(row.attn_width, model.attn_width))
        mlp.append(1.0 if row.mlp_removed else _removed(row.mlp_width, model.mlp_width))
    return attention, mlp


def _removed(kept: int, dense: int) -> float:
    return 1.0 - kept / dense if dense > 0 else 0.0


def uses_log_scale(values: list[float]) -> bool:
    """Whether perplexities this far apart need a logarithmic axis."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return bool(finite) and max(finite) / min(finite) >= LOG_SPREAD


# --- drawing -------------------------------------------------------------------------------------
def draw_figures(comparison: Comparison) -> list[DrawnFigure]:
    """The perplexity curves, then the per-layer map (none without sessions)."""
    with _style():
        figures = [_drawn(PERPLEXITY, *_perplexity_figure(comparison))]
        if comparison.sessions:
            figures.append(_drawn(LAYERS, *_layers_figure(comparison)))
    return figures


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """matplotlib's defaults plus ours, for the time of the drawing only."""
    import matplotlib as mpl
    import matplotlib.style

    with matplotlib.style.context("default"), mpl.rc_context(_RC):
        yield


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _perplexity_figure(comparison: Comparison):
    from matplotlib.ticker import PercentFormatter

    found = curves(comparison)
    legend_columns = min(3, len(found) + 1)  # the sessions and the dense model
    legend_rows = math.ceil((len(found) + 1) / legend_columns)
    figure = _new_figure(8.0, 4.4 + 0.2 * legend_rows)
    axes = figure.add_subplot()
    for curve in found:
        points = [
            (x, y) for x, y in zip(curve.ratios, curve.perplexities, strict=True)
            if math.isfinite(y) and y > 0
        ]  # fmt: skip
        axes.plot(
            [x for x, _ in points], [y for _, y in points],
            color=curve.colour, linestyle=curve.linestyle, linewidth=1.6,
            marker="o", markersize=3.2, label=curve.label,
        )  # fmt: skip
    dense = comparison.dense.calibration_ppl
    values = [y for curve in found for y in curve.perplexities]
    if math.isfinite(dense) and dense > 0:
        values.append(dense)
        axes.axhline(dense, color="0.35", linestyle=(0, (2, 3)), linewidth=1.0, zorder=1)
        axes.plot(
            [0.0], [dense], linestyle="none", marker="*", markersize=11, color="black",
            zorder=5, label=f"dense ({perplexity_text(dense)})",
        )  # fmt: skip
    log = uses_log_scale(values)
    if log:
        axes.set_yscale("log")
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    axes.set_xlabel("pruning ratio (share of all parameters removed)")
    axes.set_ylabel("calibration perplexity" + (" (log scale)" if log else ""))
    axes.grid(True, which="major", color="0.9", linewidth=0.8)
    axes.set_axisbelow(True)
    # below the plot: it never hides a curve, however many sessions there are
    figure.legend(loc="outside lower center", ncols=legend_columns, fontsize=9, frameon=False)
    title = "Calibration perplexity against pruning ratio"
    caption = (
        "Each session's calibration perplexity after every step of its plan, starting from "
        f"the dense model (star, {perplexity_text(dense)})"
        + ("; logarithmic axis" if log else "")
        + "."
    )
    return figure, title, caption


def _layers_figure(comparison: Comparison):
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    sessions = comparison.sessions
    figure = _new_figure(8.0, 0.75 + 1.2 * len(sessions))
    rows = figure.subplots(len(sessions), 1, squeeze=False)[:, 0]
    mesh = None
    for axes, session in zip(rows, sessions, strict=True):
        attention, mlp = layer_shares(session.plan)
        layers = len(attention)
        mesh = axes.pcolormesh(
            np.array([attention, mlp], dtype=float), cmap="YlOrRd", vmin=0.0, vmax=1.0,
            edgecolors="white", linewidth=0.6,
        )  # fmt: skip
        axes.set_ylim(2, 0)  # attention above the MLP
        axes.set_yticks([0.5, 1.5], ["attention", "MLP"])
        every = max(1, math.ceil(layers / 32))
        axes.set_xticks([i + 0.5 for i in range(0, layers, every)])
        axes.set_xticklabels([str(i) for i in range(0, layers, every)], fontsize=8)
        axes.tick_params(length=0)
        scores = session.scores
        axes.set_title(
            f"{session_label(scores.name, scores.method)}: {scores.ratio:.1%} of parameters "
            "removed",
            loc="left", fontsize=10,
        )  # fmt: skip
        for spine in axes.spines.values():
            spine.set_visible(False)
    rows[-1].set_xlabel("layer")
    bar = figure.colorbar(mesh, ax=list(rows), fraction=0.04, pad=0.02, aspect=12)
    bar.set_label("share removed")
    bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    title = "What each session removed, per layer"
    caption = (
        "Per decoder layer, the share of its attention and of its MLP that each session "
        "removed: 100% is a removed block, less is channels pruned out of its width."
    )
    return figure, title, caption


def _drawn(name: str, figure, title: str, caption: str) -> DrawnFigure:
    return DrawnFigure(
        name=name,
        title=title,
        caption=caption,
        svg=inline_svg(_saved(figure, "svg").decode("utf-8"), prefix=name, label=title),
        png=_saved(figure, "png", dpi=200),
        pdf=_saved(figure, "pdf"),
    )


_METADATA = {
    "svg": {"Date": None, "Creator": None, "Type": None, "Format": None},
    "pdf": {"CreationDate": None, "ModDate": None},
    "png": {},
}


def _saved(figure, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt], **kwargs)
    return buffer.getvalue()


# --- the SVG, made fit to sit inside an HTML page ------------------------------------------------
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)  # the XML declaration and the DOCTYPE
_ROOT = re.compile(r"<svg\b[^>]*>")
_NAMESPACE = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')
_HREF = re.compile(r'\b(xlink:href|href)="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")


def inline_svg(svg: str, prefix: str, label: str) -> str:
    """``svg`` as an element of an HTML page: no prologue, no namespace declarations (the HTML
    parser knows SVG), every id prefixed with ``prefix`` (two figures on one page must not share
    ids), and an accessible name."""
    from html import escape

    svg = _PROLOGUE.sub("", svg, count=1)
    root = _ROOT.search(svg)
    if root is None:
        raise ValueError("no <svg> element in matplotlib's output")
    opening = _NAMESPACE.sub("", root.group(0))
    opening = opening[:-1].rstrip() + f' role="img" aria-label="{escape(label)}">'
    svg = svg[: root.start()] + opening + svg[root.end() :]
    svg = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _HREF.sub(lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', svg)
    svg = _URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    return svg.strip()


def perplexity_text(value: float) -> str:
    """A perplexity as the report writes it: two decimals, thousands separated."""
    return f"{value:,.2f}" if math.isfinite(value) else str(value)
