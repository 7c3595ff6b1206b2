"""Modal screens: help, dimension order, override, export, evaluation results, comparison,
quit."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
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

#: The help's sections: a name (a pane, a key) and what it does, wrapped to the dialog's width.
HELP: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Panes", (
        ("Candidates", "this step's ranking, filling in as each candidate is scored: "
                       "perplexity with it removed, change against now, parameters freed"),
        ("Removed per layer", "■ present · removed, for attention and MLP; bars: MLP width and "
                              "attention (query) channels kept; the last commit is highlighted"),
        ("Perplexity", "perplexity against pruning ratio, from the dense model to the target; "
                       "vertical lines: a new dimension started; x: a user override"),
        ("Memory", "GPU used/total as nvidia-smi shows it, torch allocated and reserved, a "
                   "short history; without a GPU the process memory"),
        ("Recovery", "after r, in the Candidates pane's place: training loss (dots) and "
                     "validation perplexity (x, right axis) against the step"),
    )),
    ("Keys", (
        ("space", "pause / resume (takes effect within one candidate)"),
        ("o", "override the next removal (the highlighted candidate, or a typed id; the "
              "dialog shows this model's)"),
        ("enter", "override with the highlighted candidate"),
        ("d", "order of the dimensions (applied from the next step)"),
        ("g", "guided mode: every commit waits for you"),
        ("a", "accept the engine's proposal (guided mode)"),
        ("u", "undo the last commit"),
        ("x", "export the model as pruned so far: a smaller checkpoint folder (transformers) "
              "or one GGUF file for llama.cpp (f16, q8_0, bf16, f32); in the dialog tab "
              "moves, arrows choose, enter exports"),
        ("e", "evaluate dense against pruned (lm-eval tasks, perplexity); the search waits "
              "while it runs"),
        ("r", "after the search: recover with LoRA fine-tuning; space pauses it, q stops "
              "and saves it"),
        ("c", "after the search: this session beside the other ended sessions of the same "
              "model and calibration in its folder (plans only, nothing is loaded)"),
        ("l", "log scale for the perplexity curve"),
        ("ctrl+p", "command palette: every action"),
        ("q", "quit (asks; the plan so far is kept; an evaluation under way is dropped); on "
              "a result it closes it and asks. Attached (mptui attach): detach, or s to stop "
              "the run; while it is paused, r resumes it and detaches (y leaves it paused)"),
        ("ctrl+d", "attached: detach at once; the run goes on (while it is paused, it asks "
                   "as q does)"),
        ("?", "this help; escape closes it"),
    )),
)  # fmt: skip


def help_text(width: int) -> Text:
    """The help in ``width`` cells: each description wrapped beside its name, continuation
    lines under the description (a dialog narrower than the text must not wrap them under the
    names)."""
    text = Text()
    for index, (section, rows) in enumerate(HELP):
        if index:
            text.append("\n")
        text.append(f"{section}\n", "bold")
        column = max(cell_len(name) for name, _what in rows) + 4
        room = max(20, width - column)
        for name, what in rows:
            lines = textwrap.wrap(what, room) or [""]
            text.append(f"  {name}".ljust(column), "bold")
            text.append(lines[0] + "\n")
            for line in lines[1:]:
                text.append(" " * column + line + "\n")
    text.rstrip()
    return text


class HelpText(Static):
    """The help, wrapped again whenever its width changes."""

    def on_resize(self) -> None:
        self.update(help_text(self.size.width or 80))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield HelpText(help_text(80), id="help-text")


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
    """The structure to remove next; ``examples`` are ids of this model
    (:func:`~.state.override_examples`)."""

    def __init__(self, suggestion: str | None, examples: str) -> None:
        super().__init__(f"Remove next ({examples}):", suggestion or "", "structure id")


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


class ResultScreen(ModalScreen[None]):
    """A result shown over the run (an evaluation, a comparison): escape or enter closes it,
    ``q`` closes it and asks to quit, as ``q`` does everywhere else."""

    BINDINGS = [
        Binding("escape,enter", "dismiss", "Close"),
        Binding("q", "close_and_quit", "Quit"),
    ]

    def action_close_and_quit(self) -> None:
        app = self.app
        self.dismiss()
        app.call_later(app.run_action, "quit_app")


class EvaluationScreen(ResultScreen):
    """Dense against pruned (and recovered), side by side; the numbers are also in the session
    folder."""

    def __init__(self, title: str, rows: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.title_text, self.rows = title, rows

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="result-dialog"):
            yield Label(self.title_text)
            table = DataTable(id="evaluation", cursor_type="none")
            recovered = ("recovered",) if self.rows and len(self.rows[0]) == 5 else ()
            table.add_columns("", "dense", "pruned", *recovered, "change")
            table.add_rows(self.rows)
            yield table
            yield Label(
                f"{session_files.EVALUATION} and {session_files.SUMMARY_MD} in the session folder"
                "  [b]esc[/b] close  [b]q[/b] quit"
            )


class ComparisonScreen(ResultScreen):
    """Sessions side by side (``mptui compare``'s table, plans only), this one marked ``▶``;
    escape closes.

    Headers of two words take two lines, so that the table fits 80 columns; a wider one (long
    session names) scrolls sideways with the arrows rather than being cut."""

    def __init__(self, comparison, current: Path | None = None) -> None:
        """``current``: this session's folder, whose row is marked."""
        super().__init__()
        self.comparison = comparison
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="result-dialog"):
            yield Label(f"Calibration {self.comparison.calibration}")
            table = DataTable(id="comparison", cursor_type="none", header_height=2)
            for column in self.comparison.columns():
                table.add_column(two_lines(column))
            rows = self.comparison.rows()
            marked = self._current_row()
            for index, row in enumerate(rows):
                table.add_row(*row, label="▶" if index == marked else "")
            table.show_row_labels = marked is not None
            yield table
            yield Label(
                ("▶ this session.  " if marked is not None else "")
                + "Held-out perplexity and tasks: mptui compare SESSION... --eval-text FILE "
                "--tasks a,b  [b]esc[/b] close  [b]q[/b] quit"
            )

    def _current_row(self) -> int | None:
        """The table row of this session (the first row is the dense model), if it is there."""
        if self.current is None:
            return None
        here = Path(self.current).resolve()
        for index, session in enumerate(self.comparison.sessions, start=1):
            if Path(session.path).resolve() == here:
                return index
        return None


def two_lines(header: str) -> str:
    """``calib ppl`` as ``calib`` over ``ppl``: a header is often wider than its numbers."""
    first, _space, rest = header.partition(" ")
    return f"{first}\n{rest}" if rest else header


class QuitScreen(ModalScreen[bool]):
    """Quit or stay; ``dropped`` names what quitting now throws away (an evaluation under way,
    which is not saved until it ends)."""

    BINDINGS = [
        Binding("y,enter", "dismiss(True)", "Quit"),
        Binding("n,escape", "dismiss(False)", "Stay"),
    ]

    def __init__(self, dropped: str | None = None) -> None:
        super().__init__()
        self.dropped = dropped

    def compose(self) -> ComposeResult:
        lost = f" {self.dropped[:1].upper()}{self.dropped[1:]} is dropped." if self.dropped else ""
        with Vertical(id="dialog", classes="message-dialog"):
            yield Label(
                f"Quit mptui? The plan so far is kept.{lost}  [b]y[/b] quit   [b]n[/b] stay",
                id="quit-text",
            )


class DetachScreen(ModalScreen[str | None]):
    """Attached to a served run: leaving detaches; stopping the run is a key of its own.
    ``dropped``: what a stop would throw away (an evaluation under way); detaching keeps it.
    ``paused``: what is paused, when something is (``the run is paused at step 5``): detached,
    it would wait for someone to attach and resume it, so the dialog says so and ``r``
    resumes it before detaching."""

    BINDINGS = [
        Binding("y,enter", "dismiss('detach')", "Detach"),
        Binding("r", "resume", "Resume and detach"),
        Binding("s", "dismiss('stop')", "Stop the run"),
        Binding("n,escape", "dismiss(None)", "Stay"),
    ]

    def __init__(self, dropped: str | None = None, paused: str | None = None) -> None:
        super().__init__()
        self.dropped = dropped
        self.paused = paused

    def compose(self) -> ComposeResult:
        stop = f"stop the run ({self.dropped} is dropped)" if self.dropped else "stop the run"
        if self.paused:
            question = (
                f"Detach? {self.paused[:1].upper()}{self.paused[1:]}: it stays paused after "
                "you detach.  [b]r[/b] resume and detach   [b]y[/b] detach, leave it paused   "
            )
        else:
            question = "Detach? The run goes on.  [b]y[/b] detach   "
        with Vertical(id="dialog", classes="message-dialog"):
            yield Label(f"{question}[b]s[/b] {stop}   [b]n[/b] stay", id="detach-text")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``r`` only when something is paused."""
        return action != "resume" or self.paused is not None

    def action_resume(self) -> None:
        self.dismiss("resume")
