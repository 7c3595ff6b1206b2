"""Modal screens: help, dimension order, override, export, evaluation results, comparison,
quit."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import (
    DataTable,
    Input,
    Label,
    OptionList,
    RadioButton,
    RadioSet,
    Static,
)
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
  x       export the model as pruned so far: a smaller checkpoint folder
          (transformers) or one GGUF file for llama.cpp (f16, q8_0, bf16,
          f32); in the dialog tab moves, arrows choose, enter exports
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


#: The export dialog's formats (``commands.EXPORT_FORMATS``), as the user reads them.
EXPORT_FORMATS = {
    "safetensors": "safetensors folder (transformers)",
    "gguf": "GGUF file (llama.cpp)",
}
#: GGUF types (the engine's ``GGUF_TYPES``) in the dialog's order: the first is the default.
GGUF_CHOICES = ("f16", "q8_0", "bf16", "f32")
#: What the path field asks for, and its placeholder, by format.
_WHERE = {
    "safetensors": ("To (a new folder, or an earlier export it replaces):", "folder"),
    "gguf": ("To (a file ending in .gguf; an earlier GGUF is replaced):", "NAME.gguf"),
}


@dataclass(frozen=True)
class ExportChoice:
    """What the export dialog asks for: ``gguf_type`` is None for a safetensors folder."""

    path: str
    format: str = "safetensors"
    gguf_type: str | None = None


class Choice(RadioSet, inherit_bindings=False):
    """A radio set whose arrows choose, not only highlight (as a radio group does elsewhere),
    so that enter is left to the dialog: it exports from any field."""

    BINDINGS = [
        Binding("down,right", "next_choice", "Next option", show=False),
        Binding("up,left", "previous_choice", "Previous option", show=False),
        Binding("space", "toggle_button", "Choose", show=False),
    ]

    def on_mount(self) -> None:
        # the highlight starts on the choice, not on the first (where RadioSet's mount puts it,
        # after this handler)
        self.call_later(self._highlight_choice)

    def _highlight_choice(self) -> None:
        if self.pressed_index >= 0:
            self._selected = self.pressed_index

    def action_next_choice(self) -> None:
        self.action_next_button()
        self._choose_highlighted()

    def action_previous_choice(self) -> None:
        self.action_previous_button()
        self._choose_highlighted()

    def _choose_highlighted(self) -> None:
        if self._selected is not None:
            button = self.children[self._selected]
            if isinstance(button, RadioButton) and not button.value:
                button.value = True


class ExportScreen(ModalScreen[ExportChoice | None]):
    """Where and as what to export: a checkpoint folder or one GGUF file (of a type). The path
    field starts focused, so ``x`` then enter exports as offered; tab reaches the choices."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("enter", "submit", "Export", show=False),
    ]
    AUTO_FOCUS = "#export-path"

    def __init__(
        self, folder: str, gguf_file: str, *, format: str = "safetensors", gguf_type: str = "f16"
    ) -> None:
        """``folder`` and ``gguf_file`` are the paths offered for each format; ``format`` and
        ``gguf_type`` the choices the dialog opens with."""
        super().__init__()
        self.defaults = {"safetensors": folder, "gguf": gguf_file}
        self.format = format if format in EXPORT_FORMATS else "safetensors"
        self.gguf_type = gguf_type if gguf_type in GGUF_CHOICES else GGUF_CHOICES[0]

    def compose(self) -> ComposeResult:
        where, placeholder = _WHERE[self.format]
        with Vertical(id="dialog", classes="export-dialog"):
            yield Label("Export the model as pruned so far")
            yield Choice(
                *(RadioButton(label, value=name == self.format) for name, label in
                  EXPORT_FORMATS.items()),
                id="export-format", compact=True,
            )  # fmt: skip
            with Horizontal(id="gguf-row"):
                yield Label("GGUF type ", id="gguf-type-label")
                yield Choice(
                    *(RadioButton(name, value=name == self.gguf_type) for name in GGUF_CHOICES),
                    id="gguf-type", compact=True,
                )  # fmt: skip
            yield Label(where, id="export-where")
            yield Input(value=self.defaults[self.format], placeholder=placeholder, id="export-path")
            yield Label(
                "[b]tab[/b] next field  [b]arrows[/b] choose  [b]enter[/b] export  "
                "[b]esc[/b] cancel",
                id="export-keys",
            )

    def on_mount(self) -> None:
        self._show_format()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        if event.radio_set.id == "gguf-type":
            self.gguf_type = GGUF_CHOICES[event.index]
            return
        chosen = list(EXPORT_FORMATS)[event.index]
        if chosen == self.format:
            return
        path = self.query_one("#export-path", Input)
        if path.value.strip() in ("", self.defaults[self.format]):  # not edited: follow the format
            path.value = self.defaults[chosen]
        self.format = chosen
        self._show_format()

    def _show_format(self) -> None:
        where, placeholder = _WHERE[self.format]
        self.query_one("#export-where", Label).update(where)
        self.query_one("#export-path", Input).placeholder = placeholder
        self.query_one("#gguf-row").disabled = self.format != "gguf"

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if not path:
            self.dismiss(None)
            return
        if self.format == "gguf" and not path.lower().endswith(".gguf"):
            self.notify("a GGUF file's name ends in .gguf", severity="warning")
            self.query_one("#export-path", Input).focus()
            return
        gguf_type = self.gguf_type if self.format == "gguf" else None
        self.dismiss(ExportChoice(path, self.format, gguf_type))


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
