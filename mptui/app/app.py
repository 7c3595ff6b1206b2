"""The mptui Textual app: status line, four live panes, and controls over the engine thread.

The engine runs in its own thread and pushes events into a deque; a timer drains it a few
times a second, folds the events into :class:`RunState` and repaints, so however fast events
arrive the screen repaints at a bounded rate, and keys always answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from mptui.engine.api import (
    DEFAULT_THEME,
    EvalRequest,
    RecoverySettings,
    command_table,
    session_files,
)
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.flags import cli_words

from .gpu import NvmlReader
from .panes import CandidatesPane, LayersPane, MemoryPane, PerplexityPane, StatusLine
from .recovery_pane import TITLE as RECOVERY_TITLE
from .recovery_pane import RecoveryPane
from .screens import (
    ComparisonScreen,
    DetachScreen,
    EvaluationScreen,
    ExportChoice,
    ExportScreen,
    HelpScreen,
    OrderScreen,
    OverrideScreen,
    QuitScreen,
)
from .state import RunState, display_name, evaluation_rows, override_examples
from .themes import load_themes

#: Seconds between repaints.
REPAINT_INTERVAL = 0.25
WIDE_COLUMNS = 140


class MptuiApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "mptui"
    #: ``?`` comes first: the footer shows as many as the width allows, and help (which lists
    #: every key) must be among them at 80 columns.
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("o", "override", "Override"),
        Binding("d", "order", "Order"),
        Binding("g", "guided", "Guided"),
        Binding("a", "accept", "Accept"),
        Binding("u", "undo", "Undo"),
        Binding("x", "export", "Export"),
        Binding("e", "evaluate", "Evaluate"),
        Binding("r", "recover", "Recover"),
        Binding("c", "compare", "Compare"),
        Binding("l", "log_scale", "Log"),
        Binding("q", "quit_app", "Quit"),
        Binding("ctrl+d", "detach", "Detach"),
    ]

    def __init__(
        self,
        engine=None,
        *,
        replay: Iterable[ev.Event] = (),
        theme_name: str | None = None,
        user_theme_dir: Path | None = None,
        gpu_reader: NvmlReader | None = None,
        eval_request: EvalRequest | None = None,
        export_dir: Path | None = None,
        attached_to: str | None = None,
        recovery: RecoverySettings | None = None,
        session_dir: Path | None = None,
        gguf_type: str | None = None,
    ) -> None:
        """``eval_request`` is what ``e`` evaluates; ``export_dir`` what ``x`` offers first (a
        folder, or a ``.gguf`` file: then the dialog opens on GGUF, of ``gguf_type``, else f16);
        ``recovery`` what ``r`` runs after the search; ``session_dir`` the run's session folder,
        whose neighbours ``c`` compares it with.

        ``attached_to`` (``process PID on HOST``): ``engine`` is a run served elsewhere
        (``mptui attach``). Leaving then detaches and the run goes on; only an explicit stop
        (``q`` then ``s``) stops it.
        """
        super().__init__()
        self._recovery = recovery
        self._eval_request = eval_request
        self._export_dir = export_dir
        self._session_dir = session_dir
        # what the export dialog opens with: the last choice, or the format of --export
        gguf_given = export_dir is not None and export_dir.suffix.lower() == ".gguf"
        self._export_format = "gguf" if gguf_given else "safetensors"
        self._gguf_type = gguf_type or "f16"
        self._gpu_reader = gpu_reader or NvmlReader()
        self.engine = engine
        self.state = RunState()
        self._inbox: deque[ev.Event] = deque(replay)
        self._engine_started = False
        self._tty: int | None = None  # the terminal's descriptor, watched while mounted
        self.attached_to = attached_to
        self._run_ended = False  # attached: the run closed the connection
        if attached_to:
            self.state.link = f"attached to {attached_to}"
        self._theme_name = theme_name
        self._user_theme_dir = user_theme_dir
        if engine is not None:
            engine.subscribe(self._inbox.append)  # deque.append is thread-safe

    def compose(self) -> ComposeResult:
        # kept as attributes: a modal screen on top must not hide them from the repaint timer
        self.status = StatusLine(id="status")
        self.candidates = CandidatesPane(id="candidates")
        self.layers = LayersPane(id="layers")
        self.perplexity = PerplexityPane(id="perplexity")
        self.memory = MemoryPane(self._gpu_reader, id="memory")
        self.recovery = RecoveryPane(id="recovery")
        self.recovery.display = False
        self.recovery.border_title = RECOVERY_TITLE
        self.candidates.border_title = "Candidates"
        self.perplexity.border_title = "Perplexity"
        self.memory.border_title = "Memory"
        yield self.status
        with Container(id="panes"):
            yield self.candidates
            yield self.recovery
            with VerticalScroll(id="layers-scroll") as scroll:
                scroll.border_title = "Removed per layer"
                yield self.layers
            yield self.perplexity
            yield self.memory
        yield Footer(compact=True)  # one space between keys: every key fits 120 columns

    def on_mount(self) -> None:
        themes, problems = load_themes(self._user_theme_dir)
        for theme in themes.values():
            self.register_theme(theme)
        for problem in problems:
            self.notify(problem, severity="warning", timeout=8)
        wanted = self._theme_name or DEFAULT_THEME
        if wanted not in themes:
            self.notify(f"no theme '{wanted}'; using {DEFAULT_THEME}", severity="warning")
            wanted = DEFAULT_THEME
        self.theme = wanted
        self._reflow()
        self.drain()
        self.set_interval(REPAINT_INTERVAL, self.drain)
        self._watch_terminal()
        if self.engine is not None:
            self.engine.start()
            self._engine_started = True

    # --- the terminal going away ----------------------------------------------------------
    def _watch_terminal(self) -> None:
        """A dropped SSH link or a killed tmux: save and exit, never linger without a screen
        holding the device and the session lock. SIGHUP is the usual sign; a terminal that
        stops answering (checked with every repaint) is the other."""
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.terminal_gone)
        self._tty = _terminal_fd()

    def _terminal_answers(self) -> bool:
        if self._tty is None:
            return True
        try:
            os.get_terminal_size(self._tty)
        except OSError:
            return False
        return True

    def terminal_gone(self) -> None:
        """Stop the engine (it saves at its next candidate) and leave; the caller joins it.
        Attached, only leave: the run goes on."""
        if not self.attached_to:
            self.send(cmd.Stop())
        self.exit()

    def on_resize(self) -> None:
        self._reflow()

    def _reflow(self) -> None:
        self.set_class(self.size.width >= WIDE_COLUMNS, "wide")

    # --- events in, repaint out -----------------------------------------------------------
    def drain(self) -> None:
        if not self._terminal_answers():
            self.terminal_gone()
            return
        changed = False
        while self._inbox:
            event = self._inbox.popleft()
            self.state.apply(event)
            changed = True
            if isinstance(event, ev.Notice):
                self.notify(cli_words(event), timeout=6)
            elif isinstance(event, ev.Exported):
                self.notify(exported_line(event), title="exported", timeout=15)
            elif isinstance(event, ev.Evaluated):
                title = f"Evaluation after {event.steps} steps (ratio {event.ratio:.2%})"
                rows = evaluation_rows(event.dense, event.pruned, event.recovered)
                self.push_screen(EvaluationScreen(title, rows))
            elif isinstance(event, ev.Error):
                self.notify(cli_words(event), title="engine error", severity="error", timeout=30)
            elif isinstance(event, ev.Finished):
                self.refresh_bindings()  # c (compare) exists from now on
                if self.state.overshoot:  # a ratio far past the target is no bug: say why
                    self.notify(self.state.overshoot, title="target overshot", timeout=20)
                if self.attached_to:
                    # A served run stays while attached (its server ends it once no one is).
                    self.state.link = (
                        f"the search has ended ({event.reason}); x exports, e evaluates; "
                        "q leaves and the run ends"
                    )
        if self.attached_to and not self._run_ended and self._engine_started:
            changed |= self._check_run_ended()
        if changed:
            self.repaint()
        self.memory.show(self.state)

    def _check_run_ended(self) -> bool:
        """Attached: once the run has closed the connection, say so (the final state stays)."""
        if not self.engine.join(timeout=0):
            return False
        self._run_ended = True
        if self.state.finished:
            self.state.link = f"the run has ended ({self.state.finished}); q leaves"
        else:
            self.state.link = f"lost the connection to {self.attached_to}; q leaves"
        self.notify(self.state.link, timeout=30)
        return True

    def repaint(self) -> None:
        for pane in (self.status, self.candidates, self.layers, self.perplexity):
            pane.show(self.state)
        if self.state.recovery is not None and not self.recovery.display:
            self.candidates.display, self.recovery.display = False, True
        self.recovery.show(self.state.recovery)

    # --- actions ----------------------------------------------------------------------------
    def send(self, command: cmd.Command) -> None:
        """Hand ``command`` to the engine, which answers it as the command table says for the
        state it reads it in (a refusal comes back as its Notice). Only where the table says
        nothing will ever read it (the run has ended) is it decided here: it would wait in the
        engine's queue for ever."""
        if self.engine is None:
            return
        if command_table.rule(command, self.engine.state).read:
            self.engine.send(command)
        elif not isinstance(command, cmd.Stop):  # a Stop asks for what has already happened
            self.notify("the run has ended; q leaves", severity="warning")

    def action_toggle_pause(self) -> None:
        """Pause the engine, or resume it (within one candidate)."""
        if self.state.paused:
            self.send(cmd.Resume())
        else:
            self.send(cmd.Pause())

    def action_override(self) -> None:
        """Override the next removal with the highlighted or a typed structure."""
        suggestion = self.candidates.selected_structure()

        def chosen(structure: str | None) -> None:
            if structure:
                self.send(cmd.Override(structure))
                self.notify(f"next removal: {structure}")

        self.push_screen(OverrideScreen(suggestion, override_examples(self.state)), chosen)

    @on(DataTable.RowSelected, "#candidates")
    def override_selected(self, event: DataTable.RowSelected) -> None:
        structure = event.row_key.value
        if structure:
            self.send(cmd.Override(structure))
            self.notify(f"next removal: {structure}")

    def action_order(self) -> None:
        """Change the order of the dimensions, from the next step."""

        def chosen(order: tuple[str, ...] | None) -> None:
            if order:
                self.send(cmd.SetOrder(order))

        self.push_screen(OrderScreen(self.state.order), chosen)

    def action_guided(self) -> None:
        """Toggle guided mode: each commit waits for you."""
        guided = not self.state.guided  # the engine's flag, as its last GuidedChanged said
        self.send(cmd.SetGuided(guided))
        self.notify("guided mode on: each commit waits for you" if guided else "guided off")

    def action_accept(self) -> None:
        """Accept the engine's proposal (guided mode); the engine says when none waits."""
        self.send(cmd.Accept())

    def action_undo(self) -> None:
        """Undo the last commit."""
        self.send(cmd.Undo())

    def action_export(self) -> None:
        """Export the model as pruned so far: a smaller checkpoint folder that loads without
        mptui, or one GGUF file llama.cpp runs."""
        if self.engine is None:
            return
        folder, gguf_file = self._export_defaults()

        def chosen(choice: ExportChoice | None) -> None:
            if choice is None:
                return
            self._export_format = choice.format
            self._gguf_type = choice.gguf_type or self._gguf_type
            path = str(Path(choice.path).expanduser().resolve())
            self.send(cmd.Export(path, format=choice.format, gguf_type=choice.gguf_type))
            what = f"GGUF ({choice.gguf_type}) " if choice.format == "gguf" else ""
            self.notify(f"exporting {what}to {choice.path} (between two candidates)")

        screen = ExportScreen(
            str(folder), str(gguf_file), format=self._export_format, gguf_type=self._gguf_type
        )
        self.push_screen(screen, chosen)

    def _export_defaults(self) -> tuple[Path, Path]:
        """The folder and the GGUF file the export dialog offers: ``--export`` (either kind),
        else the session's ``export/`` folder and ``NAME-pruned.gguf`` in the session folder."""
        given, session = self._export_dir, self._session_dir
        folder = session / session_files.EXPORT if session else Path.cwd() / "mptui-export"
        if given is not None and given.suffix.lower() == ".gguf":
            return folder, given
        folder = given or folder
        name = display_name(self.state.model).rpartition("/")[2] if self.state.model else ""
        gguf_name = f"{name or 'model'}-pruned.gguf"
        return folder, (session or folder.parent) / gguf_name

    def action_evaluate(self) -> None:
        """Evaluate dense against pruned (lm-eval tasks, perplexity); the search waits."""
        if self.engine is None or self._eval_request is None:
            self.notify("nothing to evaluate: start mptui with --eval-tasks or --eval-text")
            return
        activity = self.state.activity
        if activity and activity.kind is not ev.ActivityKind.VALIDATION:  # that one is a step
            self.notify(f"busy: {activity.label}", severity="warning")
            return
        self.send(cmd.Evaluate(self._eval_request))
        self.notify("evaluating dense and pruned; the search waits until it is done")

    def action_recover(self) -> None:
        """After the search: win back what pruning cost by LoRA fine-tuning (docs/method.md §10)."""
        if self.engine is None or self._recovery is None:
            self.notify("nothing to recover with: start mptui with --recover-data FILE")
            return
        self.send(cmd.Recover(self._recovery))  # the engine says when it cannot start now
        self.notify(f"recover: {self._recovery.steps} steps on {Path(self._recovery.data).name}")

    def action_compare(self) -> None:
        """After the search: this session beside the other ended sessions of its model and
        calibration in the same folder (their plans; nothing is loaded)."""
        from mptui.engine.api import EngineError, sibling_comparison

        plan = self.state.ended.plan if self.state.ended else None
        if not plan or not plan.get("steps"):
            self.notify("nothing to compare: this search removed nothing")
            return
        if self._session_dir is None:
            self.notify("nothing to compare: this run has no session folder")
            return
        try:
            comparison = sibling_comparison(self._session_dir, plan)
        except (EngineError, OSError) as error:
            self.notify(f"cannot compare: {cli_words(error)}", severity="warning")
            return
        if comparison is None:
            self.notify(
                f"no other ended session of this model and calibration in "
                f"{self._session_dir.parent} to compare with"
            )
            return
        self.push_screen(ComparisonScreen(comparison, self._session_dir))

    def action_log_scale(self) -> None:
        """Toggle a log scale on the perplexity curve."""
        self.perplexity.log_scale = not self.perplexity.log_scale
        self.perplexity.show(self.state)

    def action_help(self) -> None:
        """Show the keys and what each pane means."""
        self.push_screen(HelpScreen())

    def action_quit_app(self) -> None:
        """Quit (asks first; the plan so far is kept). Attached: detach, or stop the run."""
        if self.attached_to:
            self._ask_detach()
            return
        if self.state.exporting:
            self.notify("an export is being written; quit when it is done", severity="warning")
            return

        def chosen(quit_now: bool | None) -> None:
            if quit_now:
                self.send(cmd.Stop())  # the caller joins the engine: its summary is written
                self.exit()

        self.push_screen(QuitScreen(self._dropped_by_stop()), chosen)

    def _dropped_by_stop(self) -> str | None:
        """What a stop now throws away: an evaluation under way is cancelled, and nothing of
        it is kept (an export, by contrast, is waited for)."""
        return "the evaluation under way" if self.state.evaluating else None

    def action_detach(self) -> None:
        """Leave the app; the run goes on (mptui attach comes back to it). A paused run asks
        first, as q does, rather than be left waiting for someone to resume it."""
        if self._paused_now() is None:
            self.exit()
        else:
            self._ask_detach()

    def _ask_detach(self) -> None:
        paused = self._paused_now()
        # Nothing left to leave running; a paused recovery after the search still asks.
        if self._run_ended or (self.state.finished and paused is None):
            self.exit()
            return

        def chosen(answer: str | None) -> None:
            if answer == "resume":
                self.send(cmd.Resume())  # written before the connection closes: it is read
                self.exit()
            elif answer == "detach":
                self.exit(paused)  # mptui attach's last line says what was left paused
            elif answer == "stop":
                self.send(cmd.Stop())
                self.notify("stopping the run at the next candidate; it saves and ends")

        self.push_screen(DetachScreen(self._dropped_by_stop(), paused), chosen)

    def _paused_now(self) -> str | None:
        """What detaching now leaves paused (``the run is paused at step 5``), or None."""
        state = self.state
        if not state.paused or self._run_ended:
            return None
        if state.recovering:
            recovery = state.recovery
            if recovery is None or not recovery.steps:  # paused before its first step
                return "the recovery is paused"
            return f"the recovery is paused at step {recovery.step}/{recovery.steps}"
        return f"the run is paused at step {state.step}" if state.step else "the run is paused"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """ctrl+d exists only when attached to a served run, c once the search has ended."""
        if action == "detach":
            return bool(self.attached_to)
        if action == "compare":
            return self.state.search_over
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            if not self.check_action(binding.action, ()):
                continue
            action = getattr(self, f"action_{binding.action}")
            yield SystemCommand(binding.description, (action.__doc__ or "").strip(), action)


def exported_line(event: ev.Exported) -> str:
    """The one line an export is announced with: the engine's own, for its format (it loads
    torch: only when an export is done)."""
    if event.format == "gguf":
        from mptui.engine.api import describe_gguf

        return describe_gguf(event)
    from mptui.engine.api import describe_export

    return describe_export(event)


def _terminal_fd() -> int | None:
    """The file descriptor of the terminal the app draws on, or None when it is not one."""
    stream = sys.__stdin__  # Textual reads keys here; stdout may be redirected
    try:
        fd = stream.fileno() if stream is not None else -1
    except (OSError, ValueError):
        return None
    return fd if fd >= 0 and os.isatty(fd) else None
