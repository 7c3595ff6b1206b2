"""Shared fixtures: tiny models on disk (built once per session) and calibration text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family, **kwargs)`` -> folder of a tiny seeded model (cached)."""
    from mptui.engine.tiny import build_tiny_model

    built: dict[tuple, Path] = {}

    def make(family: str, **kwargs) -> Path:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = build_tiny_model(family, folder, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory) -> Path:
    """A .txt calibration file of documents separated by blank lines."""
    from mptui.engine.tiny import tiny_text

    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n\n".join(tiny_text(6)) + "\n")
    return path
