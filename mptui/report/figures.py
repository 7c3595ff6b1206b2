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
from typing import NamedTuple

from mptui.engine.api import BadInput, Comparison, Plan, method_named

PERPLEXITY = "perplexity"
LAYERS = "layers"

#: Curve colours, one per session in order (matplotlib's tab10, spelled out so the page can
#: show the same colour beside each name without importing matplotlib).
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
#: Each session also has its own dash pattern and marker, so curves that lie on each other, a
#: figure printed in grey or a reader who does not tell the colours apart still tell them apart.
#: The three cycles have lengths 10, 4 and 7: no two of the first 140 sessions look alike.
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # the star is the dense model's
#: At most about this many markers on one curve (a long search has hundreds of steps).
MARKS_PER_CURVE = 12

#: Above this ratio of largest to smallest perplexity on the plot, the y axis is logarithmic.
LOG_SPREAD = 10.0
_SALT = "mptui-report"  # svg.hashsalt: the SVG's ids come out the same on every render
_RC = {
    "svg.hashsalt": _SALT,
    "svg.fonttype": "path",  # glyphs as paths: the figure looks the same in every browser
    "pdf.fonttype": 42,  # TrueType in the PDF: its text stays text for a paper's editor
    "font.size": 10,
}


class SessionStyle(NamedTuple):
    """How one session is drawn: its colour, dash pattern and marker."""

    colour: str
    linestyle: str
    marker: str


@dataclass(frozen=True)
class Curve:
    """One session's perplexity after each step, from the dense model (ratio 0) on."""

    label: str
    colour: str
    linestyle: str
    ratios: list[float]
    perplexities: list[float]
    marker: str = "o"
    #: The points (indices into ``ratios``) a marker may go on: a layer method's whole-layer
    #: points only, every point for the others; None: every point.
    marked: tuple[int, ...] | None = None


@dataclass(frozen=True)
class HeldOut:
    """One row's held-out perplexity (``--eval-text``), measured on its final model only: the
    dense model's at ratio 0, each session's at the ratio it reached, and its recovered
    model's (None: not recovered) at the same ratio."""

    label: str
    style: SessionStyle
    index: int  # the session's place in the comparison, which sizes its marker
    ratio: float
    perplexity: float
    recovered: float | None = None


@dataclass(frozen=True)
class DrawnFigure:
    """One figure, ready for the page (``svg``, inline) and for a paper (``png``, ``pdf``)."""

    name: str  # PERPLEXITY or LAYERS: the files are STEM-NAME.png and STEM-NAME.pdf
    title: str
    caption: str
    svg: str
    png: bytes
    pdf: bytes


def session_style(index: int) -> SessionStyle:
    """The colour, dash pattern and marker of the ``index``-th session (0-based): each cycles
    on its own, so neighbours differ in all three."""
    return SessionStyle(
        COLOURS[index % len(COLOURS)],
        LINESTYLES[index % len(LINESTYLES)],
        MARKERS[index % len(MARKERS)],
    )


def marker_size(index: int, size: float) -> float:
    """``size``, a little smaller for each of three sessions in turn: a session drawn on top of
    another on the very same points (one plan, then recovered) leaves a ring of the other's
    marker showing around its own."""
    return size - 1.5 * (index % 3)


def session_label(name: str, method: str) -> str:
    return f"{name} ({method})"


def curves(comparison: Comparison) -> list[Curve]:
    """Each session's curve: ``(0, plan.dense_score)``, then ``(step.ratio, step.score)``."""
    found = []
    for index, session in enumerate(comparison.sessions):
        plan = session.plan
        style = session_style(index)
        found.append(
            Curve(
                label=session_label(session.scores.name, session.scores.method),
                colour=style.colour,
                linestyle=style.linestyle,
                ratios=[0.0, *(step.ratio for step in plan.steps)],
                perplexities=[plan.dense_score, *(step.score for step in plan.steps)],
                marker=style.marker,
                marked=tuple(marked_points(plan)),
            )
        )
    return found


def marked_points(plan: Plan) -> list[int]:
    """The points of a plan's curve (0 the dense model, ``i`` after step ``i``) its method
    marks (docs/method.md §11): a layer method's half-removed layer is no point of its own."""
    try:
        method = method_named(plan.settings.get("method"))
    except BadInput:  # a method this version does not know: every point
        return list(range(len(plan.steps) + 1))
    return method.drawn_points(plan.steps)


def held_out_points(comparison: Comparison) -> list[HeldOut]:
    """The sessions' held-out perplexities, in order; empty without ``--eval-text`` (or when
    the dense model has none to start the lines from)."""
    dense = comparison.dense.held_out_ppl
    if dense is None:
        return []
    found = []
    for index, session in enumerate(comparison.sessions):
        scores = session.scores
        if scores.held_out_ppl is None:
            continue
        recovery = scores.recovery
        found.append(
            HeldOut(
                label=session_label(scores.name, scores.method),
                style=session_style(index),
                index=index,
                ratio=scores.ratio,
                perplexity=scores.held_out_ppl,
                recovered=recovery.held_out_ppl if recovery else None,
            )
        )
    return found


def mark_every(points: int, index: int) -> tuple[int, int]:
    """matplotlib's ``markevery`` for a curve of ``points`` points: at most about
    :data:`MARKS_PER_CURVE` markers, each session's shifted a little, so two curves on the same
    points still show both their markers."""
    every = max(1, math.ceil(points / MARKS_PER_CURVE))
    return index % every, every


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
    """The calibration curves; beside them, when measured, the held-out perplexities."""
    found = curves(comparison)
    held_out = held_out_points(comparison)
    recovered = any(point.recovered is not None for point in held_out)
    entries = len(found) + 1 + recovered  # the sessions, the dense model, "recovered"
    legend_columns = min(3, entries)
    legend_rows = math.ceil(entries / legend_columns)
    figure = _new_figure(11.0 if held_out else 8.0, 4.4 + 0.2 * legend_rows)
    if held_out:
        calibration, right = figure.subplots(1, 2)
    else:
        calibration, right = figure.add_subplot(), None
    dense = comparison.dense.calibration_ppl
    held_out_dense = comparison.dense.held_out_ppl
    words = perplexity_text(dense)
    if held_out and held_out_dense is not None:
        words = f"calibration {words}, held-out {perplexity_text(held_out_dense)}"
    log = _calibration_axes(calibration, found, dense, f"dense ({words})")
    if right is not None:
        _held_out_axes(right, held_out, comparison.dense.held_out_ppl or math.nan)
        calibration.set_title("on the calibration rows, after every step", fontsize=10)
        right.set_title(f"on the held-out text ({_file_name(comparison.eval_text)})", fontsize=10)
    # below the plots: it never hides a curve, however many sessions there are
    handles, labels = calibration.get_legend_handles_labels()
    if recovered:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.3", linestyle="none", **_RECOVERED_MARK))
        labels.append("recovered (hollow marker)")
    figure.legend(
        handles, labels, loc="outside lower center", ncols=legend_columns, fontsize=9,
        frameon=False,
    )  # fmt: skip
    caption = (
        "Each session's calibration perplexity after every step of its plan, starting from "
        f"the dense model (star, {perplexity_text(dense)})"
        + ("; logarithmic axis" if log else "")
        + "."
    )
    if not held_out:
        return figure, "Calibration perplexity against pruning ratio", caption
    caption += (
        f" Right: the perplexity on the held-out text ({comparison.eval_text}) of the dense "
        "model and of each session's final model, the only ones it was measured on (the line "
        "joins the two, it is not measured in between)"
        + (
            "; a hollow marker, where the arrow points, is the session's model after its recovery"
            if recovered
            else ""
        )
        + "."
    )
    return figure, "Calibration and held-out perplexity against pruning ratio", caption


#: How a recovered model's held-out perplexity is marked: the session's marker, hollow.
_RECOVERED_MARK = {"marker": "o", "markersize": 7, "markerfacecolor": "white"}


def _calibration_axes(axes, found: list[Curve], dense: float, dense_label: str) -> bool:
    """The calibration curves on ``axes``; whether its axis is logarithmic."""
    for index, curve in enumerate(found):
        kept = [
            i for i, y in enumerate(curve.perplexities) if math.isfinite(y) and y > 0
        ]  # fmt: skip
        points = [(curve.ratios[i], curve.perplexities[i]) for i in kept]
        markable = set(range(len(curve.ratios)) if curve.marked is None else curve.marked)
        marks = [at for at, i in enumerate(kept) if i in markable]
        start, every = mark_every(len(marks), index)
        axes.plot(
            [x for x, _ in points], [y for _, y in points],
            color=curve.colour, linestyle=curve.linestyle, linewidth=1.6,
            marker=curve.marker, markersize=marker_size(index, 6.0),
            markevery=marks[start::every],
            label=curve.label,
        )  # fmt: skip
        if points:  # the end, the table's number, always marked
            axes.plot(
                [points[-1][0]], [points[-1][1]], linestyle="none", marker=curve.marker,
                markersize=marker_size(index, 8.0), color=curve.colour, markeredgecolor="black",
                markeredgewidth=0.6, zorder=4,
            )  # fmt: skip
    values = [y for curve in found for y in curve.perplexities]
    values += _dense_mark(axes, dense, dense_label)
    log = uses_log_scale(values)
    _finish_axes(axes, "calibration perplexity", log)
    return log


def _held_out_axes(axes, points: list[HeldOut], dense: float) -> None:
    """Each session's held-out perplexity against the dense model's."""
    values = _dense_mark(axes, dense, None)
    for point in points:
        style, index = point.style, point.index
        if math.isfinite(point.perplexity) and point.perplexity > 0 and math.isfinite(dense):
            values.append(point.perplexity)
            axes.plot(
                [0.0, point.ratio], [dense, point.perplexity], color=style.colour,
                linestyle=style.linestyle, linewidth=1.2, alpha=0.55,
            )  # fmt: skip
            axes.plot(
                [point.ratio], [point.perplexity], linestyle="none", marker=style.marker,
                markersize=marker_size(index, 10.0), color=style.colour, markeredgecolor="black",
                markeredgewidth=0.6, zorder=4,
            )  # fmt: skip
        after = point.recovered
        if after is not None and math.isfinite(after) and after > 0:
            values.append(after)
            axes.annotate(
                "", xy=(point.ratio, after), xytext=(point.ratio, point.perplexity),
                arrowprops={"arrowstyle": "->", "color": style.colour, "linewidth": 1.0,
                            "shrinkA": 5, "shrinkB": 5},
            )  # fmt: skip
            axes.plot(
                [point.ratio], [after], linestyle="none", color=style.colour,
                **{**_RECOVERED_MARK, "marker": style.marker}, markeredgewidth=1.4, zorder=4,
            )  # fmt: skip
    _finish_axes(axes, "held-out perplexity", uses_log_scale(values))


def _file_name(path: str | None) -> str:
    """The held-out file's name, short enough for a panel's title (the caption has the path)."""
    return (path or "").replace("\\", "/").rsplit("/", 1)[-1]


def _dense_mark(axes, dense: float, label: str | None) -> list[float]:
    """The dense model's star at ratio 0 and its level across ``axes`` (in the legend as
    ``label``, once for both panels); its value, if any."""
    if not (math.isfinite(dense) and dense > 0):
        return []
    axes.axhline(dense, color="0.35", linestyle=(0, (2, 3)), linewidth=1.0, zorder=1)
    axes.plot(
        [0.0], [dense], linestyle="none", marker="*", markersize=11, color="black", zorder=5,
        label=label,
    )  # fmt: skip
    return [dense]


def _finish_axes(axes, what: str, log: bool) -> None:
    from matplotlib.ticker import PercentFormatter

    if log:
        axes.set_yscale("log")
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    axes.set_xlabel("pruning ratio (share of all parameters removed)")
    axes.set_ylabel(what + (" (log scale)" if log else ""))
    axes.grid(True, which="major", color="0.9", linewidth=0.8)
    axes.set_axisbelow(True)


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
        target = scores.target_ratio
        asked = (
            f" (target {target:.1%})"
            if target is not None and f"{target:.1%}" != f"{scores.ratio:.1%}"
            else ""
        )
        axes.set_title(
            f"{session_label(scores.name, scores.method)}: {scores.ratio:.1%} of parameters "
            f"removed{asked}",
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
