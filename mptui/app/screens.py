"""Modal screens: help, dimension order, override, export, evaluation results, comparison,
quit."""

from __future__ import annotations

from itertools import permutations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from mptui.engine.api import DIMENSIONS, session_files

HELP = """\
[b]Panes[/b]
  [b]Candidates[/b]        this step's ranking, filling in as each candidate is scored:
                    perplexity with it removed, change against now, parameters freed
  [b]Removed per layer[/b] ■ present · removed, for attention and MLP; bars: MLP width
                    and attention (query) channels kept; the last commit is highlighted
  [b]Perplexity[/b]        perplexity against pruning ratio; vertical lines: a new
                    dimension started; x: a user override
  [b]Memory[/b]            GPU used/total as nvidia-smi shows it, torch allocated and
                    reserved, a short history; without a GPU the process memory

[b]Keys[/b]
  space   pause / resume (takes effect within one candidate)
  o       override the next removal (the highlighted candidate, or type an id such as
          L12.attn, L7.mlp, L3.mlp-1024, L3.heads-128)
  enter   override with the highlighted candidate
  d       order of the dimensions (applied from the next step)
  g       guided mode: every commit waits for you
  a       accept the engine's proposal (guided mode)
  u       undo the last commit
  x       export the model as pruned so far (a smaller checkpoint)
  e       evaluate dense against pruned (lm-eval tasks, perplexity); the search
          waits while it runs
  c       after the search: this session beside the other ended sessions of the same
          model and calibration in its folder (plans only, nothing is loaded)
  l       log scale for the perplexity curve
  ctrl+p  command palette
  q       quit (asks; the plan so far is kept); attached (mptui attach): detach,
          or s to stop the run
  ctrl+d  attached: detach at once; the run goes on
  ?       this help; escape closes it
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Static(HELP, id="help-text")


class OrderScreen(ModalScreen[tuple[str, ...] | None]):
    """Pick one of the six orders; the current one is highlighted."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: tuple[str, ...]) -> None:
        super().__init__()
        self.current = current
        self.orders = list(permutations(DIMENSIONS))

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Order of the dimensions (from the next step; shares move with them)")
            options = [Option(" → ".join(order), id=",".join(order)) for order in self.orders]
            yield OptionList(*options, id="orders")

    def on_mount(self) -> None:
        orders = self.query_one(OptionList)
        if self.current in self.orders:
            orders.highlighted = self.orders.index(self.current)
        orders.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(tuple(event.option.id.split(",")))


class AskScreen(ModalScreen[str | None]):
    """One line of input under a prompt; enter gives the text (or None when empty)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, prompt: str, value: str, placeholder: str) -> None:
        super().__init__()
        self.prompt, self.value, self.placeholder = prompt, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.prompt)
            yield Input(value=self.value, placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class OverrideScreen(AskScreen):
    def __init__(self, suggestion: str | None) -> None:
        super().__init__(
            "Remove next (L12.attn, L7.mlp, L3.mlp-1024, L3.heads-128):",
            suggestion or "",
            "structure id",
        )


class ExportScreen(AskScreen):
    def __init__(self, default: str) -> None:
        super().__init__(
            "Export the model as pruned so far to (a new folder or an earlier export):",
            default,
            "folder",
        )


class EvaluationScreen(ModalScreen[None]):
    """Dense against pruned (and recovered), side by side; the numbers are also in the session
    folder."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, title: str, rows: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.title_text, self.rows = title, rows

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text)
            table = DataTable(id="evaluation", cursor_type="none")
            recovered = ("recovered",) if self.rows and len(self.rows[0]) == 5 else ()
            table.add_columns("", "dense", "pruned", *recovered, "change")
            table.add_rows(self.rows)
            yield table
            yield Label(
                f"{session_files.EVALUATION} and {session_files.SUMMARY_MD} in the session folder"
                "  [b]esc[/b] close"
            )


class ComparisonScreen(ModalScreen[None]):
    """Sessions side by side (``mptui compare``'s table, plans only); escape closes."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, comparison) -> None:
        super().__init__()
        self.comparison = comparison

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Calibration {self.comparison.calibration}")
            table = DataTable(id="comparison", cursor_type="none")
            table.add_columns(*self.comparison.columns())
            table.add_rows(self.comparison.rows())
            yield table
            yield Label(
                "held-out perplexity and tasks: mptui compare SESSION... --eval-text FILE "
                "--tasks a,b  [b]esc[/b] close"
            )


class QuitScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y,enter", "dismiss(True)", "Quit"),
        Binding("n,escape", "dismiss(False)", "Stay"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Quit mptui? The plan so far is kept.  [b]y[/b] quit   [b]n[/b] stay")


class DetachScreen(ModalScreen[str | None]):
    """Attached to a served run: leaving detaches; stopping the run is a key of its own."""

    BINDINGS = [
        Binding("y,enter", "dismiss('detach')", "Detach"),
        Binding("s", "dismiss('stop')", "Stop the run"),
        Binding("n,escape", "dismiss(None)", "Stay"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(
                "Detach? The run goes on.  [b]y[/b] detach   [b]s[/b] stop the run   [b]n[/b] stay"
            )
