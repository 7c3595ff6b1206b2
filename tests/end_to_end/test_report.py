"""``mptui report``'s renderer on real sessions, looked at in a real headless Chromium.

Three real sessions (MultiPruner, SLEB, ShortGPT on a tiny llama) are compared and rendered.
Chromium takes a screenshot of the page and, on a copy with a small probe script, says where
each session's name is laid out; the test then checks the screenshot is a page (not blank),
that there is ink where each name is (so it is drawn inside the screenshot, not hidden, off the
page or covered) and that each session's curve colour is inside the perplexity figure. The
same checks are shown to fail on a blank page and on a page that hides its names. With a
held-out text, the sessions are scored for real and their held-out perplexities are drawn in a
panel of their own, beside the calibration curves.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mptui.engine.output.comparison import ComparedSession, Comparison, Scores
from mptui.engine.search.plan import read_plan_file
from mptui.report import write_report
from mptui.report.figures import session_style

WIDTH, HEIGHT = 1280, 2400
#: Session folders, named so that no other text of the page contains them.
RUNS = {"run-Amber": ("multipruner", "0.4"), "run-Basil": ("sleb", "0.3"),
        "run-Cedar": ("shortgpt", "0.2")}  # fmt: skip
FORCED = "the sessions ran in different precisions (float32, bfloat16)"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def comparison(tiny_model_dir, calibration_file, tmp_path_factory) -> Comparison:
    """Three real sessions of one tiny model, run headless by the CLI in this process, compared
    with the rows their own plans give (what ``compare`` fills before any evaluation)."""
    from mptui.cli import main

    model = tiny_model_dir("llama", num_layers=6)
    root = tmp_path_factory.mktemp("sessions")
    sessions = []
    for name, (method, target) in RUNS.items():
        argv = [
            str(model), "--headless", "--method", method, "--calibration", str(calibration_file),
            "--seqlen", "32", "--nsamples", "2", "--target-ratio", target,
            "--session", str(root / name),
        ]  # fmt: skip
        assert main(argv) == 0
        plan = read_plan_file(root / name / "plan.json")
        scores = Scores(name, method, plan.last.params, plan.ratio, plan.last.score)
        sessions.append(ComparedSession(root / name, plan, scores))
    plan = sessions[0].plan
    dense = Scores("dense", "dense", plan.model.params_dense, 0.0, plan.dense_score)
    return Comparison(
        plan.model.name_or_path, "calibration.txt, 2 rows of 32 tokens", dense, sessions,
        forced=(FORCED,),
    )  # fmt: skip


# --- the browser -------------------------------------------------------------------------------
def browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.fail(
        "chromium is not installed; install it (Debian/Ubuntu: apt-get install chromium) to "
        "test the report in a real browser",
        pytrace=False,
    )


def chromium(page: Path, action: str, scratch: Path) -> str:
    """Run headless Chromium on ``page`` with ``action`` (``--screenshot=...`` or
    ``--dump-dom``) in a window of WIDTH x HEIGHT, offline, with a profile of its own."""
    scratch.mkdir(parents=True, exist_ok=True)
    command = [
        browser(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
        "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={scratch / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}", action, page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(page: Path, scratch: Path) -> np.ndarray:
    """The page as Chromium draws it: HEIGHT x WIDTH x 3 bytes."""
    from PIL import Image

    path = scratch / f"{page.stem}.png"
    chromium(page, f"--screenshot={path}", scratch)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    return pixels


PROBE = """<script>
(() => {
  const names = NAMES;
  const shown = (node, r) => r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0
    && r.right <= innerWidth && r.bottom <= innerHeight
    && getComputedStyle(node.parentElement).visibility === "visible";
  const where = (text) => {
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest("script")) continue;
      for (let at = node.data.indexOf(text); at >= 0; at = node.data.indexOf(text, at + 1)) {
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + text.length);
        for (const r of range.getClientRects()) {
          if (shown(node, r)) return [r.left, r.top, r.width, r.height];
        }
      }
    }
    return null;
  };
  const found = {names: {}, figures: {}, axes: {}};
  for (const name of names) found.names[name] = where(name);
  for (const svg of document.querySelectorAll("figure svg")) {
    const r = svg.getBoundingClientRect();
    found.figures[svg.parentElement.id] = [r.left, r.top, r.width, r.height];
  }
  for (const group of document.querySelectorAll("figure svg g[id]")) {
    if (!/-axes_[0-9]+$/.test(group.id)) continue;
    const r = group.getBoundingClientRect();
    found.axes[group.id] = [r.left, r.top, r.width, r.height];
  }
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.append(out);
})();
</script>"""


def layout(page: Path, texts: list[str], scratch: Path) -> dict:
    """Where Chromium lays out the first visible occurrence of each of ``texts`` (inside the
    window, not hidden: ``[left, top, width, height]`` or None), each figure's SVG and each
    of its plots (matplotlib's ``axes_N`` groups, without the legend), from a copy of ``page``
    with a probe script that writes its findings into the DOM."""
    probe = PROBE.replace("NAMES", json.dumps(texts).replace("</", "<\\/"))
    copy = scratch / f"{page.stem}-probe.html"
    copy.write_text(page.read_text().replace("</body>", probe + "\n</body>"))
    dom = chromium(copy, "--dump-dom", scratch)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


# --- what a screenshot must show ---------------------------------------------------------------
def assert_not_blank(pixels: np.ndarray) -> None:
    packed = pixels.astype(np.uint32) << np.array([16, 8, 0], dtype=np.uint32)
    colours = len(np.unique(packed.sum(axis=2, dtype=np.uint32)))  # 1-D: fast
    inked = float((pixels.min(axis=2) < 230).mean())
    assert colours >= 64 and inked >= 0.02, f"a blank page: {colours} colours, {inked:.2%} ink"


def crop(pixels: np.ndarray, box: list[float]) -> np.ndarray:
    left, top, width, height = (round(v) for v in box)
    return pixels[top : top + height, left : left + width]


def has_ink(pixels: np.ndarray, box: list[float]) -> bool:
    """Whether text is drawn in ``box``: dark pixels, as glyphs give on the page's light
    background."""
    return int((crop(pixels, box).max(axis=2) < 120).sum()) >= 10


def colour_count(pixels: np.ndarray, box: list[float], colour: str) -> int:
    want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(crop(pixels, box).astype(int) - want).max(axis=2) <= 24).sum())


# --- the tests ---------------------------------------------------------------------------------
def test_the_report_shows_every_session_in_a_real_browser(comparison, tmp_path):
    import matplotlib

    rc_before, pyplot_before = matplotlib.rcParams.copy(), "matplotlib.pyplot" in sys.modules
    out = tmp_path / "report" / "paper.html"
    written = write_report(comparison, out)

    names = [f"paper{s}" for s in ("-perplexity.png", "-perplexity.pdf", "-layers.png")]
    assert [p.name for p in written] == ["paper.html", *names, "paper-layers.pdf"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in written)
    magic = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".html": b"<!DOCTYPE html>"}
    for path in written:
        assert path.read_bytes().startswith(magic[path.suffix]), path
    for path in written[2::2]:
        assert path.read_bytes().rstrip().endswith(b"%%EOF"), f"{path} is cut short"
    # the drawing changed nothing of the process's matplotlib
    assert matplotlib.rcParams.copy() == rc_before
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before

    page = out.read_text()
    assert not re.search(r"https?:|\bsrc\s*=|@import|<script|<link|<img", page, re.IGNORECASE)
    # the figures' references: their own ids, and the colour bar's pixels, inline
    hrefs = re.findall(r'href="([^"]*)"', page)
    targets = {"#" if href.startswith("#") else href.partition(",")[0] for href in hrefs}
    assert targets == {"#", "data:image/png;base64"}
    assert set(re.findall(r"url\((.)", page)) == {"#"}
    assert page.count("<svg") == 2

    # two renders of one comparison are the same bytes, every file of them
    again = write_report(comparison, tmp_path / "again" / "paper.html")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]

    scratch = tmp_path / "chromium"
    pixels = screenshot(out, scratch)
    assert_not_blank(pixels)
    found = layout(out, [*RUNS, FORCED], scratch)
    for text, box in found["names"].items():
        assert box is not None, f"{text!r} is not laid out inside the screenshot"
        assert has_ink(pixels, box), f"{text!r} is laid out but not drawn"
    assert set(found["figures"]) == {"figure-perplexity", "figure-layers"}
    curves = found["figures"]["figure-perplexity"]
    assert curves[1] + curves[3] <= HEIGHT and curves[2] > 400  # the curves, all on screen
    for index, name in enumerate(RUNS):
        colour = session_style(index).colour
        assert colour_count(pixels, curves, colour) >= 40, f"{name}'s curve is not drawn"


def test_the_checks_fail_on_a_blank_page_and_on_hidden_names(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>\n")
    with pytest.raises(AssertionError, match="a blank page"):
        assert_not_blank(screenshot(blank, tmp_path))

    hiding = tmp_path / "hiding.html"
    hiding.write_text(
        "<!DOCTYPE html><html><body style='font: 16px sans-serif'>"
        "<p>run-Shown</p><p style='display:none'>run-None</p>"
        "<p style='visibility:hidden'>run-Invisible</p>"
        "<p style='position:absolute; top:3000px'>run-Below</p>"
        "<p style='position:relative'>run-Covered<span style='position:absolute; inset:-4px;"
        " background:#fff; width:400px'></span></p>"
        "<figure id='figure-perplexity'><svg width='600' height='300'></svg></figure>"
        "</body></html>\n"
    )
    texts = ["run-Shown", "run-None", "run-Invisible", "run-Below", "run-Covered"]
    found = layout(hiding, texts, tmp_path)
    assert {t for t, box in found["names"].items() if box} == {"run-Shown", "run-Covered"}
    pixels = screenshot(hiding, tmp_path)
    assert has_ink(pixels, found["names"]["run-Shown"])
    assert not has_ink(pixels, found["names"]["run-Covered"])
    empty_figure = found["figures"]["figure-perplexity"]
    assert colour_count(pixels, empty_figure, session_style(0).colour) == 0


def test_importing_the_report_loads_no_matplotlib():
    """``mptui report``'s module is imported by the CLI; matplotlib comes only with a drawing."""
    code = "import sys, mptui.report; assert 'matplotlib' not in sys.modules, 'matplotlib'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_held_out_perplexity_is_drawn_beside_the_calibration_curves(
    comparison, calibration_file, tmp_path
):
    """``--eval-text``: every session is rebuilt and scored on the held-out text, and the
    perplexity figure gets a second panel, right of the calibration curves, where each
    session's colour is drawn; the page's table has the numbers, the renders stay byte-equal."""
    from mptui.engine.api import EvalRequest, compare_sessions

    request = EvalRequest.from_options(None, str(calibration_file), 32)
    evaluated = compare_sessions([s.path for s in comparison.sessions], request)
    assert all(s.scores.held_out_ppl > 1 for s in evaluated.sessions)
    out = tmp_path / "held-out.html"
    written = write_report(evaluated, out)
    again = write_report(evaluated, tmp_path / "again" / "held-out.html")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]
    page = out.read_text()
    assert "Calibration and held-out perplexity against pruning ratio" in page
    for session in evaluated.sessions:
        held_out = f"{session.scores.held_out_ppl:,.2f}"
        assert re.search(rf">{session.scores.name}</th>.*?>{held_out}</td>", page)

    scratch = tmp_path / "chromium"
    pixels = screenshot(out, scratch)
    found = layout(out, list(RUNS), scratch)
    calibration, held_out = (found["axes"][f"perplexity-axes_{n}"] for n in (1, 2))
    assert calibration[0] + calibration[2] <= held_out[0]  # side by side, not overlapping
    assert held_out[1] + held_out[3] <= HEIGHT
    for index, name in enumerate(RUNS):
        colour = session_style(index).colour
        for box, where in ((calibration, "calibration"), (held_out, "held-out")):
            drawn = colour_count(pixels, box, colour)
            assert drawn >= 15, f"{name} is not drawn in the {where} panel ({drawn} pixels)"
