"""One public API: the app and the CLIs reach the engine through ``mptui.engine.api`` only. That
its plain-value parts load without torch needs a fresh interpreter (end_to_end/test_wall.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mptui.engine import api

ROOT = Path(__file__).resolve().parents[2]


def engine_imports(path: Path) -> list[str]:
    """Every ``mptui.engine.X`` a module imports (absolute or relative to the engine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n.startswith("mptui.engine.")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("mptui.engine.")]
    return found


def test_the_app_and_the_clis_import_only_the_api():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "mptui").rglob("*.py"))
        for name in engine_imports(path)
        if not (name == "mptui.engine.api" or name.startswith("mptui.engine.api."))
    ]
    assert not offenders, "import mptui.engine.api instead:\n" + "\n".join(offenders)


def test_the_scan_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from mptui.engine.runner import Engine\nimport mptui.engine.search.plan\n")
    assert engine_imports(module) == [
        "mptui.engine.runner", "mptui.engine.runner.Engine", "mptui.engine.search.plan",
    ]  # fmt: skip


def test_every_public_name_resolves():
    for name in api.__all__:  # getattr raises for a name that does not resolve
        value = getattr(api, name)
        assert value is not None or name == "DEFAULT_BATCH_SIZE", name  # None: from memory
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


def test_prune_raises_the_engines_own_error(tiny_model_dir, calibration_file, tmp_path):
    with pytest.raises(api.CalibrationError, match="does not exist") as caught:
        api.prune(str(tiny_model_dir("llama")), calibration=str(tmp_path / "missing.txt"),
                  target_ratio=0.2, seqlen=32)  # fmt: skip
    assert type(caught.value) is api.CalibrationError
    with pytest.raises(api.BadInput, match=r"^attn_group 24 is not whole KV groups") as caught:
        api.prune(str(tiny_model_dir("llama")), calibration=str(calibration_file),
                  target_ratio=0.2, seqlen=32, attn_group=24)  # fmt: skip
    assert type(caught.value) is api.BadInput


def test_every_name_the_app_and_clis_import_from_the_api_exists():
    wanted = {
        (path.relative_to(ROOT), alias.name)
        for path in sorted((ROOT / "mptui").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and node.module == "mptui.engine.api"
        for alias in node.names
    }
    assert len(wanted) > 20
    missing = [f"{path}: {name}" for path, name in sorted(wanted) if not hasattr(api, name)]
    assert not missing, missing


def test_a_type_checker_sees_every_lazy_name_where_it_is_loaded_from():
    """The names loaded on first use are imported under TYPE_CHECKING too, from the same module
    and under the same original name, so a type checker knows what ``api.Engine`` is."""

    from mptui.engine import api

    tree = ast.parse(Path(api.__file__).read_text())
    block = next(
        node for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )  # fmt: skip
    seen = {
        alias.asname or alias.name: (node.module, alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    seen.pop("Subscriber")
    lazy = {name: (module, name) for name, module in api._LAZY.items()}
    assert seen == lazy
