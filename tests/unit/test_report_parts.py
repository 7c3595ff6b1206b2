"""The pure parts of ``mptui report``: what the figures plot, how settings are shortened, and the
page around the figures (escaped, the forced warning first, every score column). The real
render, in a real browser, is tests/end_to_end/test_report.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mptui.engine.comparison import ComparedSession, Comparison, Scores
from mptui.engine.plan import Plan, PlanModel, PlanStep
from mptui.engine.structures import Structure
from mptui.report.figures import curves, inline_svg, layer_shares, uses_log_scale
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
