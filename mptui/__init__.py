"""mptui: MultiPruner in a terminal.

This module must stay tiny: the engine (``mptui.engine``) lives in this namespace and importing
it must not drag in the app or Textual.

Installed, ``engine/`` and ``themes/`` are packaged inside this namespace. In a plain copy of the
repository (nothing installed: a bare GPU machine running ``python -m bench gpu-check``, a git
worktree beside an editable install) they sit beside this folder instead, so the checkout's root
joins this package's search path and ``mptui.engine`` is the checkout's own ``engine/``.
"""

from pathlib import Path

__version__ = "0.1.0"


def _checkout_root() -> Path | None:
    """The repository root when this package runs from a checkout, else None (installed: the
    parent is site-packages, which never holds both of these)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "engine" / "__init__.py").is_file():
        return root
    return None


if (_root := _checkout_root()) is not None:
    __path__.append(str(_root))  # the checkout's engine/ and themes/ become mptui.engine, .themes
