"""The pure parts of ``mptui report`` and of ``mptui compare``'s table: what the figures plot
and how each session is told apart in them, how settings are shortened, the page around the
figures (escaped, the forced warning first, every score column, standard errors, targets and
recoveries) and how sessions are named. The real render, in a real browser, is
tests/end_to_end/test_report.py."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from mptui.engine.output.comparison import (
    ComparedSession,
    Comparison,
    Recovery,
    Scores,
    session_names,
)
from mptui.engine.search.plan import Plan, PlanModel, PlanStep
from mptui.engine.search.structures import Structure
from mptui.report.figures import (
    MARKS_PER_CURVE,
    curves,
    draw_figures,
    held_out_points,
    inline_svg,
    layer_shares,
    mark_every,
    session_style,
    uses_log_scale,
)
from mptui.report.page import (
    render_page,
    score_columns,
    setting_text,
    settings_rows,
)

HOSTILE = '<script>alert("x")</script> & co'


def plan_of(*structures: Structure, method: str = "multipruner") -> Plan:
    """A 4-layer plan (MLP 100 wide, attention 64) whose steps are ``structures``."""
    steps = [
        PlanStep(i, s, score=10.0 + i, params=1000 - 100 * i, ratio=0.1 * i, chosen_by="engine")
        for i, s in enumerate(structures, start=1)
    ]
    settings = {"method": method, "calibration": {"source": "c.txt", "seqlen": 32}}
    return Plan(PlanModel("acme/tiny", 1000, 4, 100, 64), settings, 9.5, steps)


def comparison_of(*named: tuple[str, Plan], **kw) -> Comparison:
    sessions = [ComparedSession(Path(name), plan, scores_of(name, plan)) for name, plan in named]
    dense = Scores("dense", "dense", 1000, 0.0, 9.5)
    return Comparison("acme/tiny", "c.txt, 8 rows of 32 tokens", dense, sessions, **kw)


def scores_of(name: str, plan: Plan) -> Scores:
    """The row a session gets from its own plan (what compare fills before any evaluation)."""
    params = plan.last.params if plan.last else plan.model.params_dense
    score = plan.last.score if plan.last else plan.dense_score
    return Scores(name, plan.settings["method"], params, plan.ratio, score)


def test_the_layer_map_is_the_share_of_each_sub_block_removed():
    plan = plan_of(
        Structure("attn_block", 1),
        Structure("mlp_channels", 2, remove=25, width_after=75),
        Structure("attn_heads", 3, remove=16, width_after=48),
        Structure("mlp_block", 3),
    )
    attention, mlp = layer_shares(plan)
    assert attention == [0.0, 1.0, 0.0, 0.25]
    assert mlp == [0.0, 0.0, 0.25, 1.0]


def test_each_curve_starts_at_the_dense_score_and_follows_the_steps():
    plan = plan_of(Structure("mlp_block", 0), Structure("attn_block", 2))
    (curve,) = curves(comparison_of(("run-a", plan)))
    assert curve.label == "run-a (multipruner)"
    assert curve.ratios == [0.0, 0.1, 0.2]
    assert curve.perplexities == [9.5, 11.0, 12.0]


def test_the_axis_turns_logarithmic_when_perplexities_spread():
    assert not uses_log_scale([9.5, 12.0, 80.0])
    assert uses_log_scale([9.5, 12.0, 95.0])
    assert not uses_log_scale([float("nan"), 9.5])


def test_settings_are_flattened_and_long_values_shortened():
    assert setting_text(None) == "—"
    assert setting_text(True) == "true"
    assert setting_text(0.123456789) == "0.123457"
    assert setting_text([0.5, 0.25]) == "[0.5, 0.25]"
    influence = [0.123456, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert setting_text(influence) == "[0.1235, 0.2, 0.3, 0.4, … (7 values)]"
    assert setting_text("x" * 500) == "x" * 119 + "…"
    rows = settings_rows({"calibration": {"source": "c.txt", "seed": 42}, "fast": False})
    assert rows == {"calibration.source": "c.txt", "calibration.seed": "42", "fast": "false"}


def test_held_out_and_task_columns_appear_when_any_row_has_them():
    comparison = comparison_of(("run-a", plan_of(Structure("mlp_block", 0))))
    assert score_columns(comparison) == (False, [])
    dense = Scores("dense", "dense", 1000, 0.0, 9.5, held_out_ppl=11.0, tasks={"piqa": 0.7})
    session = ComparedSession(
        Path("b"), plan_of(), Scores("b", "sleb", 900, 0.1, 10.0, tasks={"arc_easy": 0.5})
    )
    both = Comparison("m", "c", dense, [session], tasks=("piqa",))
    assert score_columns(both) == (True, ["piqa", "arc_easy"])
    page = render_page(both, [], Path("report.html"))
    assert re.search(r"<th>dense</th>.*?11\.00.*?0\.7000.*?—</td></tr>", page)
    assert re.search(r"<th>.*?b</th>.*?—.*?—.*?0\.5000</td></tr>", page)


def test_every_text_is_escaped_and_the_forced_warning_comes_first():
    plan = plan_of(Structure("mlp_block", 0))
    plan.settings["note"] = HOSTILE
    comparison = comparison_of((HOSTILE, plan), forced=(f"different calibrations: {HOSTILE}",))
    page = render_page(comparison, [], Path("report.html"))
    assert "<script" not in page and HOSTILE not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"
    assert page.count(escaped) == 5  # facts, table, settings head and value, the warning
    assert page.index('class="warning"') < page.index("<h2>Evaluation</h2>")
    assert page.index("<th>dense</th>") < page.index(f"{escaped}</th>")


def test_the_page_without_forced_sessions_has_no_warning():
    page = render_page(comparison_of(("a", plan_of())), [], Path("r.html"))
    assert 'class="warning"' not in page


def test_an_svg_is_made_fit_to_share_a_page():
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "dtd">\n'
        '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="10pt" '
        'xmlns="http://www.w3.org/2000/svg"><defs><path id="m1" d="M0 0"/></defs>'
        '<g clip-path="url(#p2)"><use xlink:href="#m1"/></g><clipPath id="p2"/></svg>'
    )
    assert inline_svg(svg, "fig", 'a "title"') == (
        '<svg width="10pt" role="img" aria-label="a &quot;title&quot;"><defs>'
        '<path id="fig-m1" d="M0 0"/></defs><g clip-path="url(#fig-p2)">'
        '<use xlink:href="#fig-m1"/></g><clipPath id="fig-p2"/></svg>'
    )


@pytest.mark.parametrize("count", [0, 1])
def test_a_comparison_of_few_sessions_still_renders(count):
    named = [("only", plan_of())][:count]
    page = render_page(comparison_of(*named), [], Path("r.html"))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


# --- telling sessions apart ---------------------------------------------------------------------
def test_each_session_differs_from_its_neighbours_in_colour_dash_and_marker():
    styles = [session_style(i) for i in range(140)]
    assert len(set(styles)) == 140
    for before, after in itertools.pairwise(styles):
        assert all(a != b for a, b in zip(before, after, strict=True)), (before, after)
    assert "*" not in {style.marker for style in styles}  # the dense model's star


def test_long_curves_get_few_markers_staggered_per_session():
    assert mark_every(5, 0) == (0, 1)  # every point
    start, every = mark_every(300, 3)
    assert len(range(start, 300, every)) <= MARKS_PER_CURVE + 1
    assert {mark_every(300, i)[0] for i in range(every)} == set(range(every))


def test_sessions_are_named_by_the_path_below_their_common_folder(tmp_path):
    assert session_names([Path("/r/a/mp"), Path("/r/b/mp")]) == ["a/mp", "b/mp"]
    assert session_names([Path("/r/x"), Path("/r/y")]) == ["x", "y"]
    assert session_names([Path("/r/s"), Path("/r/s/inner")]) == ["s", "s/inner"]
    assert session_names([Path("/r/only")]) == ["only"]
    assert session_names([tmp_path / "a" / ".." / "b", tmp_path / "c"]) == ["b", "c"]


def _session(index: int, name: str, **scores) -> ComparedSession:
    plan = plan_of(Structure("mlp_block", index), Structure("attn_block", index))
    return ComparedSession(Path(name), plan, Scores(name, "multipruner", 800, 0.2, 12.0, **scores))


def test_the_drawn_curves_differ_in_dash_and_marker_and_end_marked():
    """Two sessions with the very same plan lie on each other: the drawing itself (real
    matplotlib) still gives each its own dash and marker, and marks where each ends."""
    from mptui.report import figures

    same = [_session(0, "a"), _session(0, "b")]
    comparison = Comparison("m", "c", Scores("dense", "dense", 1000, 0.0, 9.5), same)
    with figures._style():
        figure, *_ = figures._perplexity_figure(comparison)
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    a, b = lines["a (multipruner)"], lines["b (multipruner)"]
    assert list(a.get_ydata()) == list(b.get_ydata())
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    ends = [line for line in axes.get_lines() if len(line.get_xdata()) == 1]
    assert {line.get_marker() for line in ends} >= {a.get_marker(), b.get_marker()}


def test_the_held_out_panel_has_each_session_and_each_recovery():
    from mptui.report import figures

    recovery = Recovery(4, 4, 30.0, 40.0, "data.txt", held_out_ppl=14.0)
    sessions = [
        _session(0, "a", held_out_ppl=15.0),
        _session(1, "b", held_out_ppl=16.0, recovery=recovery),
    ]
    dense = Scores("dense", "dense", 1000, 0.0, 9.5, held_out_ppl=11.0)
    comparison = Comparison("m", "c", dense, sessions, eval_text="/x/held.txt")
    points = held_out_points(comparison)
    assert [(p.label, p.perplexity, p.recovered) for p in points] == [
        ("a (multipruner)", 15.0, None),
        ("b (multipruner)", 16.0, 14.0),
    ]
    assert held_out_points(Comparison("m", "c", Scores("d", "dense", 1, 0.0, 9.5), sessions)) == []
    with figures._style():
        figure, title, caption = figures._perplexity_figure(comparison)
    _calibration, held_out = figure.axes
    assert title == "Calibration and held-out perplexity against pruning ratio"
    assert "/x/held.txt" in caption and "hollow marker" in caption
    assert held_out.get_title() == "on the held-out text (held.txt)"
    marks = [line for line in held_out.get_lines() if len(line.get_xdata()) == 1]
    hollow = [line for line in marks if line.get_markerfacecolor() == "white"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in hollow] == [(0.2, 14.0)]
    assert hollow[0].get_marker() == session_style(1).marker
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "dense (calibration 9.50, held-out 11.00)" in legend
    assert "recovered (hollow marker)" in legend


def test_the_figures_of_one_comparison_are_the_same_bytes():
    sessions = [_session(0, "a", held_out_ppl=15.0), _session(1, "b", held_out_ppl=16.0)]
    dense = Scores("dense", "dense", 1000, 0.0, 9.5, held_out_ppl=11.0)
    comparison = Comparison("m", "c", dense, sessions, eval_text="held.txt")
    first, again = draw_figures(comparison), draw_figures(comparison)
    for one, other in zip(first, again, strict=True):
        assert (one.svg, one.png, one.pdf) == (other.svg, other.png, other.pdf)


# --- the table: targets, standard errors, recoveries ----------------------------------------
def test_the_table_shows_the_target_the_stderr_and_the_recovery():
    recovery = Recovery(
        20, 30, 31.5, 45.25, "alpaca.jsonl", held_out_ppl=13.0, tasks={"piqa": 0.71},
        task_stderr={"piqa": 0.02},
    )  # fmt: skip
    dense = Scores(
        "dense", "dense", 1000, 0.0, 9.5, 11.0, {"piqa": 0.75}, task_stderr={"piqa": 0.01}
    )
    plain = Scores("a", "sleb", 750, 0.25, 12.0, 14.0, {"piqa": 0.7}, target_ratio=0.25)
    recovered = Scores(
        "b", "multipruner", 700, 0.3, 13.0, 15.0, {"piqa": 0.6}, task_stderr={"piqa": 0.0213},
        target_ratio=0.2, recovery=recovery,
    )  # fmt: skip
    sessions = [ComparedSession(Path(s.name), plan_of(), s) for s in (plain, recovered)]
    comparison = Comparison("m", "c", dense, sessions, eval_text="h.txt", tasks=("piqa",))
    assert comparison.columns() == (
        "name", "method", "params", "ratio", "target", "calib ppl", "recovery val ppl",
        "held-out ppl", "piqa",
    )  # fmt: skip
    assert comparison.rows() == [
        ("dense", "dense", "1,000", "0.00%", "—", "9.500", "—", "11.000", "0.7500 ± 0.0100"),
        ("a", "sleb", "750", "25.00%", "25.00%", "12.000", "—", "14.000", "0.7000"),
        ("b", "multipruner", "700", "30.00%", "20.00%", "13.000", "31.500", "15.000 → 13.000",
         "0.6000 ± 0.0213 → 0.7100 ± 0.0200"),
    ]  # fmt: skip
    assert comparison.notes() == [
        "ratio: the share of parameters removed; target: what was asked for",
        "tasks: score ± lm-eval's standard error",
        "recovered: b, LoRA step 20 of 30 on alpaca.jsonl; validation perplexity 45.250 → "
        "31.500 on the recovery's own validation rows (not the calibration rows)",
        "A → B: the pruned model's score, then the recovered model's",
    ]
    written = comparison.to_dict()
    assert written["sessions"][1]["scores"]["recovery"]["held_out_ppl"] == 13.0
    assert written["dense"]["task_stderr"] == {"piqa": 0.01}

    page = render_page(comparison, [], Path("r.html"))
    assert re.search(r"<th>dense</th>.*?0\.7500 ± 0\.0100</td></tr>", page)
    row = re.search(r"b</th>.*?</tr>", page).group(0)
    assert ">30.00%</td>" in row and ">20.00%</td>" in row and ">31.50</td>" in row
    assert ">15.00<br>→ 13.00</td>" in row
    assert ">0.6000 ± 0.0213<br>→ 0.7100 ± 0.0200</td>" in row
    assert "recovery validation ppl" in page
    assert "<li>tasks: score ± lm-eval&#x27;s standard error</li>" in page
    assert "<th>recovery</th><td>—</td><td>LoRA, step 20 of 30 on alpaca.jsonl</td>" in page


def test_a_target_reached_shows_no_target_column_and_no_recovery_row():
    reached = Scores("a", "sleb", 750, 0.25, 12.0, target_ratio=0.25)
    comparison = Comparison(
        "m", "c", Scores("dense", "dense", 1000, 0.0, 9.5),
        [ComparedSession(Path("a"), plan_of(), reached)],
    )  # fmt: skip
    assert comparison.columns() == ("name", "method", "params", "ratio", "calib ppl")
    assert comparison.notes() == []
    page = render_page(comparison, [], Path("r.html"))
    assert ">target<" not in page and "<th>recovery</th>" not in page


def test_a_layer_method_is_marked_at_whole_layer_points_only():
    """A SLEB layer is two steps (attention, then MLP): the point between them is no model the
    method chose, so its curve's markers sit on the dense point and after each whole layer."""
    from mptui.report import figures

    layers = [Structure(kind, layer) for layer in (2, 0, 3) for kind in ("attn_block", "mlp_block")]
    sleb = plan_of(*layers, method="sleb")
    blocks = plan_of(*layers, method="blockpruner")
    comparison = comparison_of(("sleb", sleb), ("blocks", blocks))
    by_label = {curve.label: curve for curve in curves(comparison)}
    assert by_label["sleb (sleb)"].marked == (0, 2, 4, 6)
    assert by_label["blocks (blockpruner)"].marked == tuple(range(7))
    with figures._style():
        figure, *_ = figures._perplexity_figure(comparison)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines["sleb (sleb)"].get_markevery()) == [0, 2, 4, 6]
    assert len(lines["sleb (sleb)"].get_xdata()) == 7  # the line still runs through every step
    assert list(lines["blocks (blockpruner)"].get_markevery()) == list(range(7))
