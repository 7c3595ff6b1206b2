"""The live panes. Each one renders from :class:`RunState` when the app asks it to."""

from __future__ import annotations

from collections import deque

from rich.table import Table
from rich.text import Text
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


def sparkline(values: list[float], top: float) -> str:
    if not values or top <= 0:
        return ""
    return "".join(SPARK[min(7, int(8 * v / top))] for v in values)


class StatusLine(Static):
    """Model, method and its dimension (``sleb › blocks``), step, ratio, perplexity, state and
    the current step's progress. The method's name takes the place of the label "dimension"
    (shown until the model is loaded), so the line still fits 80 columns when attached."""

    def show(self, state: RunState) -> None:
        k, n = state.progress
        score = f"{state.score:.3f}" if state.score is not None else "—"
        dense = f"{state.dense_score:.3f}" if state.dense_score is not None else "—"
        progress = f"{k}/{n}" if n else "—"
        if state.state == "running" and n:
            progress += f", ETA {eta_text(state.eta_s)}"
        text = Text.assemble(
            (f" {state.state_label} ", "reverse bold"),
            f" {display_name(state.model) if state.model else 'loading…'}  ",
            (f"{state.method} › " if state.method else "dimension ", "dim"),
            f"{state.dimension or '—'}  ",
            ("step ", "dim"), f"{state.step}",
            ("  ⇄ " + state.link if state.link else "", "italic"), "\n",
            ("ratio ", "dim"), f"{state.ratio:.2%} of {state.target:.2%}  ",
            ("ppl ", "dim"), f"{score} (dense {dense})  ",
            ("candidate ", "dim"), progress,
        )  # fmt: skip
        if state.proposal:
            text.append(f"  ▶ {state.proposal.structure}: a accept, o override", "bold")
        if state.activity:
            done, total = state.activity.done, state.activity.total
            share = f" {done / total:.0%}" if total else "…"
            text.append(f"  ⧗ {state.activity.label}{share}", "bold")
        if state.error:
            text.append(f"  {state.error}", "bold red")
        self.update(text)


class CandidatesPane(DataTable):
    """The current step's ranking, filling in live; the best (lowest) first. With --fast, a
    score on only part of the rows reads ``~12.345`` and ranks below every fully scored one."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("structure", "ppl", "Δ ppl", "frees")

    def show(self, state: RunState) -> None:
        selected = self.selected_structure()
        self.clear()
        proposed = state.proposal.structure if state.proposal else None
        for row in state.ranked():
            marker = "▶ " if row.structure == proposed else ""
            # --fast: "~" marks a score on only some of the rows (the candidate was ruled out)
            partial = "" if row.fully_scored else "~"
            self.add_row(
                marker + row.structure,
                f"{partial}{row.score:.3f}",
                f"{partial}{row.delta:+.3f}",
                human_count(row.params_freed),
                key=row.structure,
            )
        if selected is not None and selected in state.candidates:
            self.move_cursor(row=self.get_row_index(selected))

    def selected_structure(self) -> str | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value if key is not None else None


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
        lines.append(sparkline(history, top))
        self.update(lines)
