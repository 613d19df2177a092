from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMKD_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.exists(), f"the offline datasets are expected at {DATA} (set STREAMKD_DATA)"
    return DATA


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so ./mlflow.db and outputs never leak between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMKD_DATA", str(DATA))
