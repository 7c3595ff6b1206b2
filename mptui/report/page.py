"""The report's one HTML file, and its figures as PNG and PDF beside it.

The page needs nothing at view time: the figures are inline SVG, the style is one ``<style>``,
there is no script, font, image file or address of any kind. Every text of the comparison is
escaped. Every file is written to a temporary name in its folder and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from mptui import __version__
from mptui.engine.api import (
    Comparison,
    Scores,
    ratio_text,
    task_text,
    tokens_per_second,
    write_bytes_atomic,
)

from .figures import DrawnFigure, draw_figures, perplexity_text, session_style

#: A list setting longer than this is shown by its first few values and its length.
LIST_SHOWN = 6
LIST_HEAD = 4
TEXT_SHOWN = 120  # characters of a text setting


def write_report(comparison: Comparison, out: Path) -> list[Path]:
    """Write the report to ``out`` (HTML) and its figures beside it as ``STEM-perplexity``
    and ``STEM-layers`` (``.png`` and ``.pdf``, STEM being ``out``'s stem); return the paths
    written, ``out`` first. Raises OSError when a file cannot be written."""
    out = Path(out)
    figures = draw_figures(comparison)
    written = []
    for figure in figures:
        for suffix, data in (("png", figure.png), ("pdf", figure.pdf)):
            path = figure_path(out, figure.name, suffix)
            write_bytes_atomic(path, data)
            written.append(path)
    write_bytes_atomic(out, render_page(comparison, figures, out).encode("utf-8"))
    return [out, *written]


def figure_path(out: Path, name: str, suffix: str) -> Path:
    return out.with_name(f"{out.stem}-{name}.{suffix}")


# --- the page ------------------------------------------------------------------------------------
def render_page(comparison: Comparison, figures: list[DrawnFigure], out: Path) -> str:
    """The whole HTML document (pure: ``figures`` are already drawn; ``out`` names the files
    the page mentions)."""
    title = f"mptui report: {comparison.model}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="mptui {escape(__version__)}">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>Pruning report</h1>",
        _facts(comparison),
        "</header>",
        _warnings(comparison.forced),
        _section("Evaluation", _scores_table(comparison) + _scores_note(comparison)),
        _speed_section(comparison),
        *(_figure_section(figure, out) for figure in figures),
        _section("Settings", _settings_table(comparison)),
        f"<footer>Written by mptui {escape(__version__)}.</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _facts(comparison: Comparison) -> str:
    names = ", ".join(
        _swatch(i) + _e(session.scores.name) for i, session in enumerate(comparison.sessions)
    )
    rows = [
        ("model", _e(comparison.model)),
        ("calibration", _e(comparison.calibration)),
        ("held-out text", _e(comparison.eval_text) if comparison.eval_text else None),
        ("tasks", _e(", ".join(comparison.tasks)) if comparison.tasks else None),
        (f"sessions ({len(comparison.sessions)})", names or "none"),
        ("in", _e(sessions_folder(comparison)) if comparison.sessions else None),
    ]
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v is not None)
    return f'<dl class="facts">{items}</dl>'


def sessions_folder(comparison: Comparison) -> str:
    """The folder the sessions' names are relative to (the table shows each session by what
    tells it from the others; the page says once where they all are)."""
    parents = [os.path.dirname(os.path.abspath(s.path)) for s in comparison.sessions]
    return os.path.commonpath(parents)


def _warnings(forced: Iterable[str]) -> str:
    forced = list(forced)
    if not forced:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in forced)
    return (
        '<section class="warning" role="alert">'
        "<h2>Warning: these sessions are not comparable as they stand</h2>"
        f"<ul>{items}</ul>"
        "<p>They were compared anyway (<code>--force</code>); read the numbers with care.</p>"
        "</section>"
    )


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{_e(heading)}</h2>{body}</section>"


def _figure_section(figure: DrawnFigure, out: Path) -> str:
    png, pdf = (figure_path(out, figure.name, s).name for s in ("png", "pdf"))
    return _section(
        figure.title,
        f'<figure id="figure-{_e(figure.name)}">{figure.svg}'
        f"<figcaption>{_e(figure.caption)} Also beside this file as <code>{_e(png)}</code> "
        f"and <code>{_e(pdf)}</code>.</figcaption></figure>",
    )


# --- the evaluation table ------------------------------------------------------------------------
def score_columns(comparison: Comparison) -> tuple[bool, list[str]]:
    """Whether the table has a held-out column, and its task columns: the comparison's tasks,
    then any other task a row has, in the order first seen."""
    rows = [comparison.dense, *(s.scores for s in comparison.sessions)]
    held_out = comparison.eval_text is not None or any(r.held_out_ppl is not None for r in rows)
    tasks = list(comparison.tasks)
    for row in rows:
        tasks += [task for task in row.tasks if task not in tasks]
    return held_out, tasks


def _scores_table(comparison: Comparison) -> str:
    held_out, tasks = score_columns(comparison)
    columns = _Columns(comparison.shows_target(), bool(comparison.recovered()), held_out, tasks)
    head = ["<th>session</th>", "<th>method</th>", '<th class="num">parameters</th>']
    head.append('<th class="num">ratio</th>')
    if columns.target:
        head.append('<th class="num">target</th>')
    head.append('<th class="num">calibration ppl</th>')
    if columns.recovered:
        head.append('<th class="num">recovery validation ppl</th>')
    if held_out:
        head.append('<th class="num">held-out ppl</th>')
    head += [f'<th class="num">{_e(task)}</th>' for task in tasks]
    body = [_score_row(comparison.dense, "", columns, dense=True)]
    body += [
        _score_row(session.scores, _swatch(i), columns)
        for i, session in enumerate(comparison.sessions)
    ]
    return (
        '<div class="wide"><table class="scores">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody>"
        "</table></div>"
    )


@dataclass(frozen=True)
class _Columns:
    """Which optional columns the evaluation table has."""

    target: bool
    recovered: bool
    held_out: bool
    tasks: list[str]


def _score_row(scores: Scores, swatch: str, columns: _Columns, dense: bool = False) -> str:
    recovery = scores.recovery
    cells = [
        f"<th>{swatch}{_e(scores.name)}</th>",
        f"<td>{_e(scores.method)}</td>",
        _number(f"{scores.params:,}"),
        _number(ratio_text(scores.ratio)),
    ]
    if columns.target:
        target = scores.target_ratio
        cells.append(_number(ratio_text(target) if target is not None else None))
    cells.append(_number(perplexity_text(scores.calibration_ppl)))
    if columns.recovered:
        after = recovery.perplexity if recovery else None
        cells.append(_number(perplexity_text(after) if after is not None else None))
    if columns.held_out:
        after = recovery.held_out_ppl if recovery else None
        shown = [perplexity_text(v) for v in (scores.held_out_ppl, after) if v is not None]
        cells.append(_before_after(shown))
    for task in columns.tasks:
        shown = [task_text(scores.tasks, scores.task_stderr, task)]
        if recovery and task in recovery.tasks:
            shown.append(task_text(recovery.tasks, recovery.task_stderr, task))
        cells.append(_before_after(shown))
    opening = '<tr class="dense">' if dense else "<tr>"
    return f"{opening}{''.join(cells)}</tr>"


def _scores_note(comparison: Comparison) -> str:
    note = (
        "Ratio: the share of all parameters removed. Calibration perplexity: each plan's own "
        "final score on the shared calibration rows"
    )
    if comparison.eval_text:
        note += f"; held-out perplexity on {comparison.eval_text}"
    lines = "".join(f"<li>{_e(line)}</li>" for line in comparison.table_notes())
    return f'<p class="note">{_e(note)}.</p>' + (f'<ul class="note">{lines}</ul>' if lines else "")


# --- the speed table (--speed) ------------------------------------------------------------------
SPEED_HEADING = "What the pruning bought"


def _speed_section(comparison: Comparison) -> str:
    """Each model's generation and prompt speed in llama.cpp and in transformers, and each
    session's speed-up over dense: the other side of the evaluation's cost. Only with
    ``--speed``."""
    if not comparison.speed:
        return ""
    engines = (("llama_cpp", "llama.cpp"), ("transformers", "transformers"))
    head = ["<th>session</th>", "<th>method</th>", '<th class="num">ratio</th>']
    for _, title in engines:
        head += [
            f'<th class="num">{title} generate tok/s</th>',
            f'<th class="num">{title} speed-up</th>',
            f'<th class="num">{title} prompt tok/s</th>',
        ]
    rows = [(comparison.dense, "", True)]
    rows += [(s.scores, _swatch(i), False) for i, s in enumerate(comparison.sessions)]
    body = []
    for scores, swatch, dense in rows:
        cells = [
            f"<th>{swatch}{_e(scores.name)}</th>",
            f"<td>{_e(scores.method)}</td>",
            _number(f"{scores.ratio:.2%}"),
        ]
        speedups = comparison.speedups(scores)
        for engine, _ in engines:
            measured = getattr(scores.speed, engine) if scores.speed else None
            speedup = speedups[engine]
            cells += [
                _number(tokens_per_second(measured.generate_tps) if measured else "n/a"),
                _number(f"{speedup:.2f}×" if speedup is not None and not dense else None),
                _number(tokens_per_second(measured.prompt_tps) if measured else "n/a"),
            ]
        opening = '<tr class="dense">' if dense else "<tr>"
        body.append(f"{opening}{''.join(cells)}</tr>")
    lines = comparison.speed_notes(legend=False)
    notes = "".join(f"<li>{_e(line.removeprefix('speed: '))}</li>" for line in lines)
    return _section(
        SPEED_HEADING,
        '<div class="wide"><table class="speed">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        '<p class="note">Tokens per second, higher is better; speed-up: the session\'s '
        "generation speed over the dense model's, measured on the same machine in the same "
        f'run.</p><ul class="note">{notes}</ul>',
    )


# --- the settings table --------------------------------------------------------------------------
def _settings_table(comparison: Comparison) -> str:
    sessions = comparison.sessions
    if not sessions:
        return "<p>No session.</p>"
    columns = [
        {"steps": str(len(s.plan.steps)), "model.dtype": setting_text(s.plan.model.dtype)}
        | settings_rows(s.plan.settings)
        | _recovery_rows(s.scores)
        for s in sessions
    ]
    if not any(s.scores.recovery for s in sessions):
        for column in columns:
            del column["recovery"]
    keys: list[str] = []
    for column in columns:
        keys += [key for key in column if key not in keys]
    head = "".join(f"<th>{_swatch(i)}{_e(s.scores.name)}</th>" for i, s in enumerate(sessions))
    body = []
    for key in keys:
        values = [column.get(key, "—") for column in columns]
        differs = len(sessions) > 1 and len(set(values)) > 1
        cells = "".join(f"<td>{_e(value)}</td>" for value in values)
        opening = '<tr class="differs">' if differs else "<tr>"
        body.append(f"{opening}<th>{_e(key)}</th>{cells}</tr>")
    note = (
        '<p class="note">Each plan\'s settings; rows marked ▸ differ between sessions.</p>'
        if len(sessions) > 1
        else ""
    )
    return (
        f'{note}<div class="wide"><table class="settings"><thead><tr><th>setting</th>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _recovery_rows(scores: Scores) -> dict[str, str]:
    recovery = scores.recovery
    if recovery is None:
        return {"recovery": "—"}
    return {"recovery": f"LoRA, step {recovery.step} of {recovery.steps} on {recovery.data}"}


def settings_rows(settings: dict[str, Any]) -> dict[str, str]:
    """The settings as ``key -> text`` rows: a dict value one level down as ``key.sub``, long
    lists and texts shortened."""
    rows: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            for sub, inner in value.items():
                rows[f"{key}.{sub}"] = setting_text(inner)
        else:
            rows[str(key)] = setting_text(value)
    return rows


def setting_text(value: Any, inner: bool = False) -> str:
    """One setting as a short text: ``—`` for null, JSON's true/false, floats to 6 (in a list
    4) significant digits, a list longer than :data:`LIST_SHOWN` cut to its first values."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if inner else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        items = [setting_text(item, inner=True) for item in value]
        if len(items) > LIST_SHOWN:
            return f"[{', '.join(items[:LIST_HEAD])}, … ({len(items)} values)]"
        return f"[{', '.join(items)}]"
    if isinstance(value, dict):
        items = [f"{k}: {setting_text(v, inner=True)}" for k, v in value.items()]
        if len(items) > LIST_SHOWN:
            return "{" + ", ".join(items[:LIST_HEAD]) + f", … ({len(items)} entries)}}"
        return "{" + ", ".join(items) + "}"
    text = " ".join(str(value).split())
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


# --- small pieces --------------------------------------------------------------------------------
def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _before_after(shown: list[str]) -> str:
    """A number cell of the pruned model's value and, on a line of its own, the recovered
    model's (``→ B``): the table keeps its width however many columns it has."""
    if not shown:
        return _number(None)
    return f'<td class="num">{"<br>→ ".join(_e(text) for text in shown)}</td>'


def _number(text: str | None) -> str:
    return f'<td class="num">{_e(text) if text is not None else "—"}</td>'


def _swatch(index: int) -> str:
    colour = session_style(index).colour
    return f'<span class="swatch" style="background:{colour}"></span>'


STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1120px; padding: 28px 32px 48px; color: #1c1c1c;
  background: #fff; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 28px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
code { font: 13px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0; }
dl.facts dt { color: #666; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.warning { margin: 22px 0; padding: 10px 18px; border: 2px solid #b3261e; border-radius: 6px;
  background: #fdecea; color: #6d1610; }
.warning h2 { margin: 4px 0 6px; border: 0; color: #b3261e; }
.warning li { font-weight: 600; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e4e4e4; text-align: left;
  vertical-align: top; }
thead th { background: #f3f4f6; border-bottom: 2px solid #cfd2d6; font-weight: 600; }
tbody th { font-weight: 600; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
thead th { vertical-align: bottom; }
thead th.num { white-space: normal; }
tr.dense th, tr.dense td { color: #555; background: #fafafa; font-style: italic; }
table.settings td { overflow-wrap: anywhere; max-width: 360px; }
tr.differs th::before { content: "▸ "; color: #b35c00; }
tr.differs td { background: #fff8ec; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 7px;
  border-radius: 2px; vertical-align: -1px; }
figure { margin: 0; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 13px; margin: 8px 0; }
footer { margin-top: 40px; color: #888; font-size: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  h2 { break-after: avoid; }
  figure, tr { break-inside: avoid; }
  .wide { overflow: visible; }
  .swatch, .warning, tr.differs td, thead th { -webkit-print-color-adjust: exact;
    print-color-adjust: exact; }
}
""".strip()
