"""How a model is named to the user, from its hub id or folder: plain text, torch-free, so the
app shows names without loading torch (``mptui attach`` starts fast)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def looks_like_path(name: str) -> bool:
    """A hub id is ``owner/name``; anything else with a separator or a dot prefix is a path."""
    if os.path.exists(name):
        return True
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def check_model_path(name_or_path: str) -> None:
    """A model named by a path must exist: one line, checked before torch is imported."""
    from .errors import BadInput

    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise BadInput(f"model path '{name_or_path}' does not exist")


#: Folder names that say nothing of the model (the demo's is ``model``): a folder so named is
#: named by its config's hub id, else by the first ancestor with a name of its own.
_GENERIC_FOLDERS = frozenset(
    {"model", "models", "checkpoint", "checkpoints", "ckpt", "weights", "hf", "pretrained",
     "final", "latest", "export", "exported", "output", "outputs", "out", "snapshots"}
)  # fmt: skip
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_CACHE_FOLDER = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)")


def model_label(name_or_path: str | os.PathLike, config=None) -> str:
    """The model's own name, short, for a status line, a summary or a model card.

    A hub id as it is; a folder in the Hugging Face cache by its hub id; any other local folder
    by its name, unless that name says nothing (``model``, a commit hash): then by the config's
    ``_name_or_path`` when that is a hub id (``config`` or the folder's ``config.json``), else by
    the nearest parent folder with a name of its own (``demo/model`` is ``demo``). Never a path.
    """
    text = str(name_or_path)
    if not looks_like_path(text):
        return text
    path = Path(os.path.abspath(os.path.expanduser(text)))
    cached = _HUB_CACHE_FOLDER.search(path.as_posix())
    if cached:
        return f"{cached['owner']}/{cached['name']}"
    if not _says_nothing(path.name):
        return path.name
    recorded = _recorded_name(path, config)
    if recorded:
        return recorded
    named = next((parent.name for parent in path.parents if not _says_nothing(parent.name)), "")
    return named or path.name or text


def model_source(name_or_path: str | os.PathLike, config=None) -> str:
    """A hub id as it is, a local folder as ``a local checkpoint (NAME)``: how summaries and
    model cards name a base model without showing a path of this machine."""
    label = model_label(name_or_path, config)
    return f"a local checkpoint ({label})" if looks_like_path(str(name_or_path)) else label


def _says_nothing(folder_name: str) -> bool:
    name = folder_name.lower()
    return name in _GENERIC_FOLDERS or bool(_COMMIT.fullmatch(name)) or not name


def _recorded_name(folder: Path, config) -> str | None:
    """The config's ``_name_or_path`` when it is a hub id (as transformers 4 saved it)."""
    if config is not None:
        recorded = getattr(config, "_name_or_path", None)
    else:
        try:
            recorded = json.loads((folder / "config.json").read_text()).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            recorded = None
    if not isinstance(recorded, str) or not recorded.strip():
        return None
    recorded = recorded.strip().rstrip("/")
    if looks_like_path(recorded) or "\\" in recorded or ":" in recorded:
        return None  # a path, of this machine or another
    return None if _says_nothing(recorded.rpartition("/")[2]) else recorded


__all__ = ["looks_like_path", "model_label", "model_source"]
