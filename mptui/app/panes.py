"""The live panes. Each one renders from :class:`RunState` when the app asks it to."""

from __future__ import annotations

import math
from collections import deque

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text
from textual.events import Click
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from .gpu import GpuMemory, NvmlReader
from .state import MEMORY_HISTORY, RunState, display_name

SPARK = "▁▂▃▄▅▆▇█"


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


def human_count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def eta_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def bar(value: int, full: int, width: int) -> str:
    """A bar of ``width`` cells, filled in proportion; eighths make small changes visible."""
    if full <= 0:
        return " " * width
    eighths = round(8 * width * value / full)
    whole, part = divmod(eighths, 8)
    text = "█" * whole + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return text.ljust(width)


def sparkline(values: list[float], top: float, width: int | None = None) -> str:
    """One line of bars, the latest ``width`` values (all without ``width``): a history longer
    than the pane must not wrap onto a second line."""
    if not values or top <= 0:
        return ""
    if width is not None:
        values = values[-width:] if width > 0 else []
    return "".join(SPARK[min(7, int(8 * v / top))] for v in values)


def share_text(done: int, total: int) -> str:
    """`` 40%`` of a task whose size is known, else ``…``."""
    return f" {done / total:.0%}" if total else "…"


def fit_text(text: str, room: int, keep_end: str = "") -> str:
    """``text`` in at most ``room`` cells, shortened with ``…`` before ``keep_end`` (a share
    or a number, which must never be cut in half)."""
    if cell_len(text + keep_end) <= room:
        return text + keep_end
    if room <= cell_len(keep_end) + 1:
        return keep_end.strip()[: max(room, 0)]
    head = text
    while head and cell_len(head + "…" + keep_end) > room:
        head = head[:-1]
    return head.rstrip() + "…" + keep_end


class StatusLine(Static):
    """Model, method and its dimension (``sleb › blocks``), step, ratio, perplexity, state and
    what the run is doing now. The method's name takes the place of the label "dimension"
    (shown until the model is loaded).

    Each line is fitted to the width it has (80 columns included): parts that matter less go
    first (the dense perplexity, then the lesser of two notes), and a long label (an export's
    path) is shortened before its share, so no number is ever cut in half. An error that ended
    the run is shown whole below them, wrapped: the line grows for it (app.tcss)."""

    _state: RunState | None = None

    def on_resize(self) -> None:
        if self._state is not None:
            self.show(self._state)

    def show(self, state: RunState) -> None:
        self._state = state
        width = self.size.width or 80
        lines = [self._first_line(state, width), second_line(state, width)]
        if state.error:
            lines.append(Text(state.error, "bold red"))
        self.update(Text("\n").join(lines))

    def _first_line(self, state: RunState, width: int) -> Text:
        text = Text.assemble(
            (f" {state.state_label} ", "reverse bold"),
            f" {display_name(state.model) if state.model else 'loading…'}  ",
            (f"{state.method} › " if state.method else "dimension ", "dim"),
            f"{state.dimension or '—'}  ",
            ("step ", "dim"), f"{state.step}",
        )  # fmt: skip
        if state.link:
            room = width - text.cell_len - 4
            link = state.link
            if cell_len(link) > room:  # ⇄ says it: the process and host matter more
                link = link.removeprefix("attached to ")
            text.append(f"  ⇄ {fit_text(link, room)}" if room > 8 else "  ⇄", "italic")
        text.truncate(width, overflow="ellipsis")
        return text


def status_notes(state: RunState) -> list[tuple[str, str, str]]:
    """What the run is doing now, most important first, as ``(text, share, style)``: a task
    besides the search (an export, an evaluation, a validation), a proposal waiting, a target
    overshot, or the step's progress. ``share`` is kept whole when the text is shortened."""
    notes: list[tuple[str, str, str]] = []
    if state.activity:
        share = share_text(state.activity.done, state.activity.total)
        notes.append((f"⧗ {state.activity.label}", share, "bold"))
    if state.proposal:
        notes.append((f"▶ {state.proposal.structure}: a accept, o override", "", "bold"))
    smallest = state.smallest_share
    if state.overshoot and smallest is not None:  # the ratio and target are beside it
        notes.append(("overshot: smallest structure removes", f" {smallest:.2%}", "bold"))
    k, n = state.progress
    if n and not state.search_over and not state.recovering:
        progress = f"candidate {k}/{n}"
        if state.state == "running" and k:  # no rate before the first candidate is scored
            progress += f", ETA {eta_text(state.eta_s)}"
        notes.append((progress, "", ""))
    return notes


def second_line(state: RunState, width: int) -> Text:
    """``ratio … of …  ppl … (dense …)`` and the notes of :func:`status_notes`, in ``width``
    cells: the first note before the dense perplexity, the dense perplexity before the rest."""
    score = f"{state.score:.3f}" if state.score is not None else "—"
    dense = f" (dense {state.dense_score:.3f})" if state.dense_score is not None else ""
    text = Text.assemble(
        ("ratio ", "dim"), f"{state.ratio:.2%} of {state.target:.2%}  ", ("ppl ", "dim"), score
    )
    notes = status_notes(state)
    room = width - text.cell_len
    first = notes[0] if notes else None
    if first is not None and cell_len("  " + first[0] + first[1] + dense) > room:
        dense = ""  # the note matters more than the dense perplexity
    text.append(dense)
    room -= cell_len(dense)
    for index, (note, share, style) in enumerate(notes):
        fitted = fit_text(note, room - 2, share) if index == 0 else note + share
        if cell_len(fitted) + 2 > room or not fitted:
            if index == 0:
                continue
            break
        text.append("  ")
        text.append(fitted, style)
        room -= cell_len(fitted) + 2
    return text


class CandidatesPane(DataTable):
    """The current step's ranking, filling in live; the best (lowest) first. With --fast, a
    score on only part of the rows reads ``~12.345`` and ranks below every fully scored one.

    Columns are sized to what they hold now (a blocks step's wide perplexities do not widen
    the table for good), numbers right-aligned with one cell between columns, so that the four
    fit the pane at 80 columns.

    The cursor stays on the row the user moved it to (keys or mouse), whatever its rank now;
    a new proposal (guided mode) takes it, which scrolls the table to the engine's choice (not
    always the lowest perplexity); otherwise it stays on the first row, so the best candidates
    are in view rather than whichever was scored first."""

    HEADERS = ("structure", "ppl", "Δ ppl", "frees")

    def __init__(self, **kwargs) -> None:
        super().__init__(cell_padding=0, **kwargs)
        self._proposal_shown: object | None = None  # the Proposal event the cursor went to
        self._steered = False  # the user moved the cursor (since the latest proposal)

    # --- the user's moves: the cursor follows their row from now on --------------------------
    def _steer(self) -> None:
        self._steered = True

    def action_cursor_up(self) -> None:
        super().action_cursor_up()
        self._steer()

    def action_cursor_down(self) -> None:
        super().action_cursor_down()
        self._steer()

    def action_page_up(self) -> None:
        super().action_page_up()
        self._steer()

    def action_page_down(self) -> None:
        super().action_page_down()
        self._steer()

    def action_scroll_top(self) -> None:
        super().action_scroll_top()
        self._steer()

    def action_scroll_bottom(self) -> None:
        super().action_scroll_bottom()
        self._steer()

    async def _on_click(self, event: Click) -> None:
        await super()._on_click(event)
        self._steer()

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._set_columns([len(header) for header in self.HEADERS])

    def _set_columns(self, widths: list[int]) -> None:
        self.clear(columns=True)
        for index, (header, width) in enumerate(zip(self.HEADERS, widths, strict=True)):
            justify = "left" if index == 0 else "right"
            label = Text(cell(header, index), justify=justify)
            self.add_column(label, width=width + 1, key=header)

    def show(self, state: RunState) -> None:
        if state.proposal is not None and state.proposal is not self._proposal_shown:
            self._proposal_shown = state.proposal
            self._steered = False  # a new proposal takes the cursor; the user may move on
        selected = self.selected_structure() if self._steered else None
        proposed = state.proposal.structure if state.proposal else None
        rows = []
        for row in state.ranked():
            marker = "▶ " if row.structure == proposed else ""
            # --fast: "~" marks a score on only some of the rows (the candidate was ruled out)
            partial = "" if row.fully_scored else "~"
            cells = (
                marker + row.structure, f"{partial}{score_text(row.score)}",
                f"{partial}{score_text(row.delta, sign=True)}", human_count(row.params_freed),
            )  # fmt: skip
            rows.append((row.structure, cells))
        widths = [len(header) for header in self.HEADERS]
        for _key, cells in rows:
            widths = [max(w, cell_len(c)) for w, c in zip(widths, cells, strict=True)]
        self._set_columns(widths)
        keys = {key for key, _cells in rows}
        for key, cells in rows:
            self.add_row(
                *(Text(cell(c, i), justify="left" if i == 0 else "right")
                  for i, c in enumerate(cells)),
                key=key,
            )  # fmt: skip
        if selected is not None and selected in keys:
            self.move_cursor(row=self.get_row_index(selected))
        elif proposed is not None and proposed in keys:
            self.move_cursor(row=self.get_row_index(proposed))
        elif keys:
            self.move_cursor(row=0)

    def selected_structure(self) -> str | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value if key is not None else None


def cell(text: str, column: int) -> str:
    """One cell between columns: after the first (left-aligned), before the others."""
    return text + " " if column == 0 else " " + text


def score_text(value: float, sign: bool = False) -> str:
    """Three decimals where they fit (``49.056``, ``+0.743``), one past 1000 (``1327.8``): a
    blocks step's perplexities must not push the *frees* column out of an 80-column pane."""
    if not math.isfinite(value):
        return f"{value:+}" if sign else f"{value}"
    digits = 1 if abs(value) >= 1000 else 3
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


class LayersPane(Static):
    """A row per layer: attention and MLP present or removed, MLP width and heads kept."""

    _state: RunState | None = None

    def on_resize(self) -> None:
        if self._state is not None:
            self.show(self._state)

    def show(self, state: RunState) -> None:
        self._state = state
        # labels, numbers and gaps take 30 cells; the two bars share what is left
        bar_width = max(2, (self.size.width - 30) // 2)
        table = Table(box=None, padding=(0, 1), show_edge=False)
        table.add_column("L", justify="right", style="dim", no_wrap=True)
        table.add_column("attn", no_wrap=True)
        table.add_column("mlp", no_wrap=True)
        table.add_column("mlp width", no_wrap=True)
        table.add_column("heads", no_wrap=True)
        for index, row in enumerate(state.layers):
            style = "reverse" if index == state.last_commit_layer else ""
            mlp_kept = 0 if row.mlp_removed else row.mlp_width
            attn_kept = 0 if row.attn_removed else row.attn_width
            table.add_row(
                str(index),
                "·" if row.attn_removed else "■",
                "·" if row.mlp_removed else "■",
                f"{bar(mlp_kept, state.mlp_width, bar_width)}{mlp_kept:>6}",
                f"{bar(attn_kept, state.attn_width, bar_width)}{attn_kept:>5}",
                style=style,
            )
        self.update(table)


class PerplexityPane(PlotextPlot):
    """Perplexity against pruning ratio, with dimension changes and user overrides marked."""

    log_scale = False

    def show(self, state: RunState) -> None:
        plt = self.plt
        plt.clear_data()
        if state.curve:
            xs = [100 * point.ratio for point in state.curve]
            ys = [point.score for point in state.curve]
            # from the dense model to the target (or past it): one point alone would sit in
            # the middle of plotext's -1..1, and a ratio below 0 means nothing
            plt.xlim(xs[0], max(*xs, 100 * state.target, xs[0] + 1.0))
            plt.plot(xs, ys, marker="dot")
            users = [
                (x, y) for x, y, p in zip(xs, ys, state.curve, strict=True) if p.chosen_by == "user"
            ]
            if users:
                plt.scatter([u[0] for u in users], [u[1] for u in users], marker="x")
            for ratio, _dimension in state.dimension_marks[1:]:
                plt.vline(100 * ratio)
        if self.log_scale:
            plt.yscale("log")
        plt.xlabel("ratio %")
        self.refresh()


def gpu_text(
    gpus: list[GpuMemory], torch_counters: dict[int, tuple[int, int]]
) -> tuple[Text, list[GpuMemory]]:
    """The devices this run uses (torch's, matched to NVML's by UUID), in torch's order, each
    with nvidia-smi's used/total and torch's counters of that same device; every NVML device
    while torch has not said which it sees. Returns the text and the devices shown."""
    mine = sorted((g for g in gpus if g.torch_index is not None), key=lambda g: g.torch_index)
    shown = mine or gpus
    text = Text()
    for gpu in shown:
        text.append(f"{gpu.label}\n", "bold")
        text.append(f" used {human_bytes(gpu.used)} / {human_bytes(gpu.total)}\n")
        if gpu.torch_index is not None:
            allocated, reserved = torch_counters.get(gpu.torch_index, (0, 0))
            text.append(
                f" torch {human_bytes(allocated)} alloc, {human_bytes(reserved)} reserved\n", "dim"
            )
    matched = {gpu.torch_index for gpu in mine}
    for index, (allocated, reserved) in sorted(torch_counters.items()):
        if index not in matched and (allocated or reserved):  # a device NVML did not name
            text.append(
                f"cuda:{index} torch {human_bytes(allocated)} alloc, "
                f"{human_bytes(reserved)} reserved\n",
                "dim",
            )
    return text, shown


class MemoryPane(Static):
    """GPU memory per device as nvidia-smi shows it, torch's counters beside it, a history.

    Without a GPU it shows the process memory from the engine's samples and says "no GPU".
    """

    def __init__(self, reader: NvmlReader, **kwargs) -> None:
        super().__init__(**kwargs)
        self._reader = reader
        self._gpu_history: deque[int] = deque(maxlen=MEMORY_HISTORY)

    def show(self, state: RunState) -> None:
        latest = state.memory[-1] if state.memory else None
        torch_counters = {i: (a, r) for i, a, r in latest.cuda} if latest else {}
        gpus = self._reader.read()
        if gpus:
            lines, shown = gpu_text(gpus, torch_counters)
            self._gpu_history.append(sum(g.used for g in shown))
            history, top = list(self._gpu_history), sum(g.total for g in shown)
        else:
            lines = Text()
            lines.append("no GPU\n", "bold")
            rss = latest.rss_bytes if latest else 0
            lines.append(f" process {human_bytes(rss)}\n")
            history = [sample.rss_bytes for sample in state.memory]
            top = int(max(history, default=0) * 1.25)
        lines.append(sparkline(history, top, self.size.width or None))  # 0: not laid out yet
        self.update(lines)
