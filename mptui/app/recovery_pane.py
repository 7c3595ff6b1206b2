"""The Recovery pane: training loss and validation perplexity against the optimizer step.

It takes the Candidates pane's place once a recovery starts (the search's candidates are over
by then); its subtitle carries the learning rate, the rate in tokens per second and the ETA.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from .panes import eta_text
from .state import RecoveryView


def recovery_subtitle(recovery: RecoveryView) -> str:
    """``step 120/300 · lr 8.2e-04 · 1,234 tok/s · ETA 1m05s`` (``done`` at the end)."""
    parts = [f"step {recovery.step}/{recovery.steps}", f"lr {recovery.lr:.1e}"]
    parts.append(f"{recovery.tokens_per_s:,.0f} tok/s")
    if recovery.finished:
        parts.append(recovery.finished)
    elif recovery.loss:
        parts.append(f"ETA {eta_text(recovery.eta_s)}")
    if recovery.validation:
        first, last = recovery.validation[0][1], recovery.validation[-1][1]
        parts.append(f"val ppl {first:.2f} → {last:.2f}")
    return " · ".join(parts)


class RecoveryPane(PlotextPlot):
    """Loss per step (left axis) and validation perplexity (right axis, markers)."""

    def show(self, recovery: RecoveryView | None) -> None:
        if recovery is None:
            return
        plt = self.plt
        plt.clear_data()
        if recovery.loss:
            steps, losses = zip(*recovery.loss, strict=True)
            plt.plot(list(steps), list(losses), marker="dot", label="loss")
        if recovery.validation:
            steps, values = zip(*recovery.validation, strict=True)
            plt.plot(list(steps), list(values), marker="x", yside="right", label="val ppl")
        plt.xlabel("step")
        self.border_subtitle = recovery_subtitle(recovery)
        self.refresh()
