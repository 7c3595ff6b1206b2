"""``mptui --help`` and README's options table say the same, and every default comes from
``mptui.engine.defaults``: the CLI, the library API and the settings cannot drift apart."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mptui.engine import defaults

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MPTUI = Path(sys.executable).parent / "mptui"

# ``--opt METAVAR   help``: the invocation has single spaces, two or more end it.
OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}(.*))?$")
DEFAULT = re.compile(r"\(default: (.*)\)$")
OPTION_NAME = re.compile(r"--[a-z][a-z-]*")


def help_options(*command: str) -> dict[str, str | None]:
    """Each long option of ``mptui COMMAND --help`` and the default its help states (None when
    it states none); a terminal wide enough that no help text wraps."""
    env = {**os.environ, "COLUMNS": "400"}
    result = subprocess.run(
        [str(MPTUI), *command, "--help"], capture_output=True, text=True, env=env, check=True
    )
    entries: list[tuple[list[str], str]] = []
    for line in result.stdout.splitlines():
        match = OPTION_LINE.match(line)
        if match:
            names = OPTION_NAME.findall(match.group(1).split(" {")[0])
            entries.append((names, match.group(2) or ""))
        elif entries and line.startswith("    ") and line.strip():
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
        elif not line.strip():
            entries.append(([], ""))  # a blank line ends an entry's help
    options: dict[str, str | None] = {}
    for names, text in entries:
        found = DEFAULT.search(text)
        for name in names:
            if name != "--help":
                options[name] = found.group(1) if found else None
    return options


def readme_options(heading: str) -> dict[str, str]:
    """``--option -> default`` from the ``| option | meaning | default |`` tables under the
    README section ``heading`` (up to the next heading of the same or a higher level)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    level = heading.split(" ")[0]
    following = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) :], re.MULTILINE)
    section = text[start : start + len(heading) + following.start()] if following else text
    options: dict[str, str] = {}
    in_table = False
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if [c.lower() for c in cells] == ["option", "meaning", "default"]:
            in_table = True
            continue
        in_table = in_table and bool(cells)
        if not in_table or set("".join(cells)) <= set("-: "):
            continue  # outside a table, or its |---|---| line
        default = cells[-1].replace("`", "")
        for name in OPTION_NAME.findall(cells[0]):
            assert name not in options, f"README lists {name} twice"
            options[name] = default
    assert options, f"no options table under {heading!r} in README.md"
    return options


def test_readme_options_table_matches_mptui_help():
    shown = help_options()
    table = readme_options("### Options")
    assert sorted(set(shown) - set(table)) == [], "in `mptui --help`, not in README's table"
    assert sorted(set(table) - set(shown)) == [], "in README's table, not in `mptui --help`"
    for name, default in shown.items():
        expected = default if default is not None else "—"
        assert table[name] == expected, f"{name}: README says {table[name]!r}, --help {expected!r}"


def test_readme_recovery_table_matches_mptui_recover_help():
    shown = help_options("recover")
    table = readme_options("### Recovery")
    assert sorted(set(shown) ^ set(table)) == [], "README's recovery table and --help differ"
    for name, default in shown.items():
        expected = default if default is not None else "—"
        assert table[name] == expected, f"{name}: README says {table[name]!r}, --help {expected!r}"
    assert shown["--steps"] == str(defaults.DEFAULT_RECOVERY_STEPS)
    assert shown["--targets"] == ",".join(defaults.DEFAULT_LORA_TARGETS)
    assert (shown["--rank"], shown["--alpha"], shown["--lr"]) == ("16", "32", "0.0001")
    assert (shown["--batch-size"], shown["--grad-accum"]) == ("8", "4")


def test_help_shows_the_defaults_of_engine_defaults():
    shown = help_options()
    assert shown["--target-ratio"] == str(defaults.DEFAULT_TARGET_RATIO)
    assert shown["--distribution"] == defaults.DEFAULT_DISTRIBUTION
    assert shown["--order"] == ",".join(defaults.DEFAULT_ORDER)
    assert shown["--nsamples"] == str(defaults.DEFAULT_NSAMPLES)
    assert shown["--seqlen"] == str(defaults.DEFAULT_SEQLEN)
    assert defaults.DEFAULT_BATCH_SIZE is None
    assert shown["--batch-size"] == "from the memory budget"
    assert shown["--seed"] == str(defaults.DEFAULT_SEED)
    assert shown["--text-field"] == defaults.DEFAULT_TEXT_FIELD
    assert shown["--dtype"] == defaults.DEFAULT_DTYPE
    assert shown["--theme"] == defaults.DEFAULT_THEME
    evaluation = help_options("eval")
    assert evaluation["--seqlen"] == str(defaults.DEFAULT_SEQLEN)
    assert evaluation["--batch-size"] == str(defaults.DEFAULT_EVAL_BATCH_SIZE)
    assert "--out" in help_options("export")


def test_cli_api_and_settings_share_their_defaults():
    """No option given: the CLI's request holds the settings' own defaults, which are the
    library API's."""
    from mptui.cli import build_parser
    from mptui.engine.api import prune
    from mptui.engine.output.eval_request import EvalRequest
    from mptui.engine.search.settings import PruneSettings
    from mptui.run_cli import build_request

    request, _ = build_request(build_parser().parse_args(["some/model"]))
    assert request.settings == PruneSettings(defaults.DEFAULT_TARGET_RATIO)
    assert request.settings.shares == {"blocks": 0.44, "mlp_channels": 0.52, "attn_heads": 0.04}
    assert request.settings.calibration.seqlen == 2048
    parameters = inspect.signature(prune).parameters
    calibration = request.settings.calibration
    for name in ("nsamples", "seqlen", "seed", "text_field"):
        assert parameters[name].default == getattr(calibration, name), name
    assert parameters["distribution"].default == defaults.DEFAULT_DISTRIBUTION
    assert parameters["order"].default == ",".join(request.settings.order)
    assert EvalRequest().seqlen == defaults.DEFAULT_SEQLEN


@pytest.mark.parametrize(
    "command", [[], ["eval"], ["export"], ["attach"], ["recover"], ["compare"], ["report"]]
)
def test_help_does_not_import_torch(command):
    code = (
        "import sys\n"
        "from mptui.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted({'torch', 'transformers', 'textual', 'matplotlib'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: mptui" in result.stdout


def test_the_three_commands_share_one_module_and_import_none_of_each_other():
    """``mptui`` dispatches to ``eval``, ``export``, ``attach`` and ``compare``; they import only
    the shared module. (``report`` is ``compare`` drawn, and takes its arguments from it.)"""
    for name in ("evaluate_cli", "export_cli", "attach_cli", "compare_cli"):
        source = (ROOT / "mptui" / f"{name}.py").read_text(encoding="utf-8")
        imported = re.findall(r"^\s*from (?:mptui|)\.(\w+) import", source, re.MULTILINE)
        others = {"cli", "evaluate_cli", "export_cli", "attach_cli", "compare_cli"}
        assert not others & set(imported), name
        assert "cli_common" in imported


COMMANDS = [[], ["eval"], ["export"], ["attach"], ["recover"], ["compare"], ["report"]]


def help_text(command: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [str(MPTUI), *command, "--help"], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_raw_markup(command):
    text = help_text(command)
    for markup in ("`", "[bold", "[/", "[dim", "%(", "%%"):
        assert markup not in text, (markup, text)


def test_options_more_than_one_command_takes_are_defined_once():
    """``--dtype``, ``--device`` and the lm-eval options come from the helpers of
    ``mptui.cli_common``: no command spells them out itself."""
    for name in ("cli", "evaluate_cli", "export_cli", "compare_cli", "recover_cli", "attach_cli"):
        source = (ROOT / "mptui" / f"{name}.py").read_text(encoding="utf-8")
        for option in ("--dtype", "--device", "--theme", "--seed", "--gguf-type", "--tasks"):
            assert f'"{option}"' not in source, (name, option)
    shown = {tuple(command): help_options(*command) for command in COMMANDS}
    for command in (["eval"], ["export"], ["compare"], ["recover"]):
        assert shown[tuple(command)]["--device"] == "cuda if present"
    assert shown[()]["--dtype"] == shown[("eval",)]["--dtype"].split(";")[0] == "auto"
    assert shown[("compare",)]["--dtype"] == "each session's own"
    assert shown[("eval",)]["--limit"] == shown[("compare",)]["--limit"] == "all"
    assert shown[()]["--theme"] == shown[("attach",)]["--theme"] == defaults.DEFAULT_THEME


def test_help_shows_the_demo_settings_where_they_differ():
    from mptui.cli import DEMO_SETTINGS, build_parser, demo_defaults

    text = " ".join(help_text([]).split())
    for name, value in DEMO_SETTINGS.items():
        default = getattr(defaults, f"DEFAULT_{name.upper()}")
        assert value != default, name
        option = f"--{name.replace('_', '-')}"
        assert f"; --demo: {value} (default: {default})" in text, option
    args = build_parser().parse_args(["--demo", "--seqlen", "64"])
    demo_defaults(args)
    assert (args.seqlen, args.nsamples, args.target_ratio) == (64, 16, 0.25)
    assert args.distribution == "40:40:20"


def test_subcommands_are_argparse_subparsers_and_a_model_is_still_a_model():
    import argparse

    from mptui.cli import SUBCOMMANDS, build_command_parser, build_parser

    parser = build_command_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(subparsers.choices) == sorted(SUBCOMMANDS)
    for name, sub in subparsers.choices.items():
        assert sub.prog == f"mptui {name}"
    args = parser.parse_args(["export", "S", "--out", "x.gguf", "--dtype", "float32"])
    assert (args.command, args.session, args.out) == ("export", "S", "x.gguf")
    assert args.dtype == "float32"
    assert build_parser().parse_args(["some/model", "--seqlen", "64"]).model == "some/model"
    for name in SUBCOMMANDS:  # the subparser's help is the command's own
        assert help_text([name]).startswith(f"usage: mptui {name} ")
