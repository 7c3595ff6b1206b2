"""What a user gets from ``pip install .`` (or ``pipx install .``, or the wheel), not from the
editable install that ``.ci/dev`` makes: the wheel holds every module and data file, and a real
install runs the demo, headless and in tmux, and README's walk-through as it is written, from a
folder outside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from tmux_session import Tmux

from mptui.engine.session import files as session_files

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: README's walk-through is every command of its ```bash blocks that works in this folder.
WALK_THROUGH = "~/mptui-demo"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Besides the installed ``mptui``, what a walk-through may call: a shell's own tools.
SHELL_TOOLS = ("cp", "mv", "mkdir", "rm", "ls")
# Repository folder -> where it lands in site-packages (pyproject.toml's package-dir).
INSTALLED_AS = {"mptui": "mptui", "engine": "mptui/engine", "themes": "mptui/themes"}
PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")
# Offline, against the build tools already installed (setuptools is in the test extra).
BUILD = ("--no-deps", "--no-build-isolation", "--no-index")


def project_files() -> list[str]:
    """The checkout as a user would have it: tracked files plus new files not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


def shipped(name: str) -> str | None:
    """The path inside the wheel of repository file ``name``; None when it does not ship."""
    folder, _, rest = name.partition("/")
    if folder not in INSTALLED_AS or not rest or "__pycache__" in name:
        return None
    return f"{INSTALLED_AS[folder]}/{rest}"


def clean_env() -> dict[str, str]:
    """The environment of the tests, minus anything that could point Python at the source."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout: builds write ``build/`` and ``*.egg-info`` into their source,
    and the working tree is shared."""
    copy = tmp_path_factory.mktemp("source")
    for name in project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, *PIP, "wheel", *BUILD, "--wheel-dir", str(out), "."],
        cwd=source,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("mptui-*.whl")
    return path


def test_wheel_holds_every_module_and_data_file(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {shipped(name) for name in project_files()} - {None}
    assert "mptui/app/app.py" in expected and "mptui/engine/model/adapters/llama.py" in expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    # One top-level package: no `engine` or `themes` of our own in the user's site-packages.
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"mptui"}
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "mptui = mptui.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def make_venv(folder: Path) -> Path:
    """A venv that sees this environment's packages (torch, transformers, ...) through a .pth
    line, so nothing is downloaded, but whose own site-packages comes first and gets mptui.
    A .pth line only adds a path: the editable mptui's finder there is never started."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "mptui-test-host.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def run(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with mptui installed from the source copy by pip (not editable)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    python = make_venv(venv)
    installed = run(python, *PIP, "install", *BUILD, "--ignore-installed", ".", cwd=source)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


@pytest.mark.slow
def test_pip_install_runs_the_demo_outside_the_repository(installed: Path, tmp_path: Path):
    venv, python = installed, installed / "bin" / "python"
    here = tmp_path / "elsewhere"  # not the repository: its folders must not be importable
    here.mkdir()
    # Found without importing them (the runs below import them): torch alone takes seconds.
    where = run(
        python,
        "-c",
        "from importlib.util import find_spec as spec\n"
        "for name in ('mptui', 'mptui.app', 'mptui.engine', 'mptui.themes', 'engine', 'themes'):\n"
        "    print(getattr(spec(name), 'origin', None))",
        cwd=here,
    )
    assert where.returncode == 0, where.stderr
    *ours, engine, themes = where.stdout.split()
    for origin in ours:
        assert Path(origin).is_relative_to(venv), origin  # the install, not the source tree
    assert engine == themes == "None"  # no top-level `engine` or `themes`
    mptui = venv / "bin" / "mptui"
    # A target the demo reaches in one step: every file the run reads, a fraction of the time.
    headless = run(
        mptui,
        "--demo",
        "--headless",
        "--target-ratio",
        "0.05",
        "--session",
        tmp_path / "headless",
        cwd=here,
    )
    assert headless.returncode == 0, headless.stdout + headless.stderr
    assert "finished (done)" in headless.stdout
    assert (tmp_path / "headless" / session_files.PLAN).exists()

    tmux = Tmux(tmp_path)
    command = (
        f"cd {here} && env -u PYTHONPATH TERM=xterm-256color {mptui} --demo "
        f"--session {tmp_path / 'app'}"
    )
    tmux.open(command, 100, 30)
    try:
        screen = tmux.wait_for("Removed per layer")
        for title in ("Candidates", "Perplexity", "Memory"):
            assert title in screen, screen
        tmux.quit()
    finally:
        tmux.kill()


@pytest.mark.slow
def test_workers_started_inside_a_clone_import_the_installed_mptui(
    installed: Path, source: Path, tmp_path: Path
):
    """Run from the root of a clone, whose mptui/ folder would shadow the install for a plain
    ``python -m mptui``: the workers start with -P and use the installed package (before, they
    imported the clone's folder and failed in seconds). The clone's own entry point here says
    so if it is ever run."""
    clone = tmp_path / "clone"
    shutil.copytree(source, clone)
    (clone / "mptui" / "__main__.py").write_text("raise SystemExit('the clone was imported')\n")
    session = tmp_path / "session"
    result = run(
        installed / "bin" / "mptui", "--demo", "--headless", "--workers", "2",
        "--target-ratio", "0.05", "--session", session, cwd=clone,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished (done)" in result.stdout
    assert json.loads((session / "plan.json").read_text())["steps"]


# --- README's walk-through ----------------------------------------------------------------------
def readme_commands() -> list[str]:
    """Every command of README's ```bash blocks, in order: continued lines joined, comments cut,
    spaces collapsed."""
    commands = []
    for block in BASH_BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(line.split("#", 1)[0].split())
            if command:
                commands.append(command)
    return commands


def walk_through() -> list[str]:
    """README's walk-through, in README's order, each report followed by the ``mptui compare``
    that README says takes "the same arguments" (less ``--out``)."""
    commands = []
    for command in readme_commands():
        if WALK_THROUGH not in command:
            continue
        commands.append(command)
        if command.startswith("mptui report "):
            compare = re.sub(r" --out \S+", "", command).replace("mptui report ", "mptui compare ")
            commands.append(compare)
    return commands


def readme_table() -> dict[str, list[str]]:
    """The rows of the ``mptui compare`` table README shows: name -> name, method, params,
    ratio (the columns a plan fixes; the scores are measured)."""
    text = README.read_text(encoding="utf-8")
    (block,) = re.findall(r"^```\n(name +method .*?)^```", text, re.MULTILINE | re.DOTALL)
    return {line.split()[0]: line.split()[:4] for line in block.splitlines()[1:] if line.strip()}


def test_readme_walk_through_names_the_demo_files_and_no_repository_path():
    """After ``pip install`` there is no clone: the demo's files go by name, and every command
    is the installed ``mptui`` (or a shell's own tool)."""
    commands = walk_through()
    assert commands[:2] == [
        "mptui --demo --headless --session ~/mptui-demo/multipruner",
        "mptui --demo --headless --method sleb --session ~/mptui-demo/sleb",
    ]
    reports = [c for c in commands if c.startswith(("mptui report ", "mptui compare "))]
    assert len(reports) == 2, commands
    for command in reports:
        assert " --eval-text demo " in command and " --tasks mptui_demo_order" in command
    assert any(" --perplexity demo " in c for c in commands if c.startswith("mptui eval "))
    for command in commands:
        assert command.split()[0] in ("mptui", *SHELL_TOOLS), command
        for repository_only in ("mptui/demo", ".venv", ".ci/", ".cache"):
            assert repository_only not in command, command
    # The table README shows has a row for the dense model and for each session compared.
    sessions = re.findall(r"~/mptui-demo/([\w-]+)(?=\s|$)", reports[1])
    assert set(readme_table()) == {"dense", *sessions}


@pytest.mark.slow
def test_readme_walk_through_runs_as_written_after_pip_install(installed: Path, tmp_path: Path):
    """Every command of the walk-through, verbatim, in bash, from a folder that is not the
    repository, with a home of its own (``~/mptui-demo``) and the installed ``mptui`` alone."""
    home, here = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    here.mkdir()
    env = clean_env() | {
        "HOME": str(home),
        "PATH": f"{installed / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    assert Path(shutil.which("mptui", path=env["PATH"])).is_relative_to(installed)
    out: dict[str, str] = {}
    for command in walk_through():
        done = subprocess.run(
            ["bash", "-c", command], cwd=here, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{command}\n{done.stderr[-3000:]}"
        out[command.split()[1]] = done.stdout  # the last of each subcommand
    # The names led to the installed package's files, not the repository's.
    task = (home / ".cache" / "mptui" / "demo-tasks" / "mptui_demo_order.yaml").read_text()
    (items,) = re.findall(r"test: (\S+)", task)
    assert Path(items).is_relative_to(installed) and Path(items).is_file()
    assert (home / "mptui-demo" / "report.html").is_file()
    # The table README shows is the one compare prints.
    lines = [line.split() for line in out["compare"].splitlines()[1:] if line.strip()]
    rows = {cells[0]: cells[:4] for cells in lines}
    for name, cells in readme_table().items():
        assert rows.get(name) == cells, f"README shows {cells}, compare printed {rows.get(name)}"
    # The recovery helped, and eval scored the same held-out text as compare.
    before, after = map(float, re.findall(r"perplexity ([\d.]+) -> ([\d.]+)", out["recover"])[0])
    assert after < before
    scores = json.loads(out["eval"])
    assert scores["recovered"]["perplexity"] < scores["pruned"]["perplexity"]
    assert f"{scores['dense']['perplexity']:.3f}" in out["compare"]
