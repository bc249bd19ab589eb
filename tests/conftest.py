"""Shared pytest configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The public traces folder: $TESSERA_DATA, else ../shared/data beside the project."""
    return Path(os.environ.get("TESSERA_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"public traces not found at {path} (set TESSERA_DATA to their folder)")
    return path
