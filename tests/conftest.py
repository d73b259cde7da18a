"""Shared fixtures: every test runs in its own temporary folder and leaves no figure open."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib
import pytest

matplotlib.use("agg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/_helpers.py
SHARED_DATA = REPO / "data"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Run each test in a fresh temporary folder and close every figure afterwards."""
    monkeypatch.chdir(tmp_path)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def data_dir() -> Path:
    """The folder of real microscope images shipped with the repository (see data/README.md)."""
    return SHARED_DATA
