"""The Recovery pane: training loss and validation perplexity against the optimizer step.

It takes the Candidates pane's place once a recovery starts (the search's candidates are over
by then); its subtitle carries the learning rate, the rate in tokens per second and the ETA.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual_plotext import PlotextPlot

from .panes import eta_text, share_text
from .state import RecoveryView

#: The pane's title, with the legend: plotext's own legend adds a glyph per axis side (``L``,
#: ``⅃``) that reads as part of the labels.
TITLE = "Recovery • loss x val ppl (right)"
#: Cells beside the pane's content that a subtitle cannot use: a rule and a space each side.
SUBTITLE_MARGIN = 4


def recovery_subtitle(recovery: RecoveryView, width: int | None = None) -> str:
    """``step 120/300 · lr 8.2e-04 · 1,234 tok/s · ETA 1m05s · val ppl 40.12 → 38.11`` (``done``
    in place of the ETA at the end, ``validating 40%`` while a validation runs).

    In ``width`` cells: the parts that matter least go first (learning rate, rate, then the
    step, which the status line shows too, then the ETA), whole, so that a number is never cut
    in half. Before the first optimizer step there is no learning rate or rate to show, rather
    than zeros."""
    parts: dict[str, str] = {"step": f"step {recovery.step}/{recovery.steps}"}
    if recovery.tokens_per_s > 0:  # an optimizer step of this run has reported them
        parts["lr"] = f"lr {recovery.lr:.1e}"
        parts["rate"] = f"{recovery.tokens_per_s:,.0f} tok/s"
    if recovery.finished:
        parts["end"] = recovery.finished
    elif recovery.validating is not None:
        parts["end"] = f"validating{share_text(*recovery.validating)}"
    elif recovery.loss and recovery.tokens_per_s > 0:
        parts["end"] = f"ETA {eta_text(recovery.eta_s)}"
    if recovery.validation:
        first, last = recovery.validation[0][1], recovery.validation[-1][1]
        parts["val"] = f"val ppl {first:.2f} → {last:.2f}"
    if width is None:
        return " · ".join(parts.values())
    for least in ("lr", "rate", "step", "end"):
        if cell_len(" · ".join(parts.values())) <= width:
            return " · ".join(parts.values())
        parts.pop(least, None)
    # a narrow pane: the one part that matters most among those that fit alone
    alone = [parts.get("val"), parts.get("end"), f"step {recovery.step}/{recovery.steps}"]
    return next((part for part in alone if part and cell_len(part) <= width), "")


def step_ticks(left: int, right: int, count: int = 5) -> list[int]:
    """Up to ``count`` whole steps from ``left`` to ``right`` for the x axis (plotext's own
    ticks would read ``6.8``, ``13.5``: there is no such step)."""
    if right <= left:
        return [left]
    return sorted({round(left + (right - left) * i / (count - 1)) for i in range(count)})


class RecoveryPane(PlotextPlot):
    """Loss per step (left axis) and validation perplexity (right axis, markers); the x axis
    runs from the first point to the last step, so the curve shows how far training is."""

    _recovery: RecoveryView | None = None

    def on_resize(self) -> None:
        if self._recovery is not None:
            self.show(self._recovery)

    def show(self, recovery: RecoveryView | None) -> None:
        if recovery is None:
            return
        self._recovery = recovery
        plt = self.plt
        plt.clear_data()
        firsts = [series[0][0] for series in (recovery.loss, recovery.validation) if series]
        left = min(firsts, default=recovery.first_step)
        right = max(recovery.steps, recovery.step, left + 1)
        plt.xlim(left, right)
        ticks = step_ticks(left, right)
        plt.xticks(ticks, [str(tick) for tick in ticks])
        if recovery.loss:
            steps, losses = zip(*recovery.loss, strict=True)
            plt.plot(list(steps), list(losses), marker="dot")
        if recovery.validation:
            steps, values = zip(*recovery.validation, strict=True)
            plt.plot(list(steps), list(values), marker="x", yside="right")
        plt.xlabel("step")
        room = self.size.width - SUBTITLE_MARGIN if self.size.width else None  # None: not laid out
        self.border_subtitle = recovery_subtitle(recovery, room)
        self.refresh()
