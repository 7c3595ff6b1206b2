"""mptui: MultiPruner in a terminal.

This module must stay tiny: the engine (``mptui.engine``) lives in this namespace and importing
it must not drag in the app or Textual.

Installed, ``engine/`` and ``themes/`` are packaged inside this namespace. In a plain copy of the
repository (nothing installed: a bare GPU machine running ``python -m bench gpu-check``, a git
worktree beside an editable install) they sit beside this folder instead: a finder maps exactly
those two names to the checkout's folders, and nothing else of the checkout (``setup.py``,
``bench/``) becomes part of ``mptui``.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

#: The packages the repository keeps beside this one, by the name they have inside it.
_BESIDE = {"mptui.engine": "engine", "mptui.themes": "themes"}


class _CheckoutPackages(importlib.abc.MetaPathFinder):
    """Finds ``mptui.engine`` and ``mptui.themes`` in a checkout's ``engine/`` and ``themes/``
    (their modules are then found in those folders by the usual machinery)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name, path=None, target=None):
        folder = _BESIDE.get(name)
        if folder is None:
            return None
        location = self.root / folder
        return importlib.util.spec_from_file_location(
            name, location / "__init__.py", submodule_search_locations=[str(location)]
        )


def _checkout_root() -> Path | None:
    """The repository root when this package runs from a checkout, else None (installed: the
    parent is site-packages, which never holds both of these)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "engine" / "__init__.py").is_file():
        return root
    return None


if (_root := _checkout_root()) is not None and not any(
    isinstance(finder, _CheckoutPackages) for finder in sys.meta_path
):
    sys.meta_path.append(_CheckoutPackages(_root))
