"""Themes from TOML files: the bundled ones in ``mptui.themes`` and the user's own.

A user theme lives in ``~/.config/mptui/themes/NAME.toml`` (``$XDG_CONFIG_HOME`` respected)
with the keys of :class:`textual.theme.Theme`. A file that does not parse or validate is
skipped with a message for the user, never a crash.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path

from textual.theme import Theme

THEME_KEYS = {f.name for f in fields(Theme)} - {"variables"}


def user_theme_dir() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "mptui" / "themes"


def theme_from_toml(text: str, source: str) -> Theme:
    """Parse one theme; raise ValueError with a message that names ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"theme {source}: not valid TOML ({error})") from None
    unknown = set(data) - THEME_KEYS
    if unknown:
        raise ValueError(f"theme {source}: unknown keys {', '.join(sorted(unknown))}")
    if "name" not in data or "primary" not in data:
        raise ValueError(f"theme {source}: 'name' and 'primary' are required")
    try:
        theme = Theme(**data)
        theme.to_color_system()  # validates every colour
    except Exception as error:
        raise ValueError(f"theme {source}: {error}") from None
    return theme


def load_themes(user_dir: Path | None = None) -> tuple[dict[str, Theme], list[str]]:
    """Bundled themes, then the user's (which may replace them); plus problems to show."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    bundled = resources.files("mptui.themes")
    sources = [
        (entry.name, entry.read_text())
        for entry in sorted(bundled.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".toml")
    ]
    folder = user_dir if user_dir is not None else user_theme_dir()
    if folder.is_dir():
        sources += [(str(path), path.read_text()) for path in sorted(folder.glob("*.toml"))]
    for source, text in sources:  # user files come last, so they may replace a bundled theme
        try:
            theme = theme_from_toml(text, source)
        except ValueError as error:
            problems.append(f"{error}; using the default")
            continue
        themes[theme.name] = theme
    return themes, problems
