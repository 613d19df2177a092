from __future__ import annotations

import os
from pathlib import Path

import pytest
import skips

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STREAMKD_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        skips.skip(skips.DATA, f"the offline datasets are expected at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so ./mlflow.db and outputs never leak between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMKD_DATA", str(DATA))


# -- skips: only the documented reasons (tests/skips.py, the README's "Tests that skip") ---------

_SKIPPED: dict[str, int] = {}
_VERDICT: list[str] = []


def _skip_text(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _police(report, excinfo) -> None:
    """Missing data skips (or fails under CI); a skip for an undocumented reason fails."""
    from streamkd.data import DataNotFoundError

    if report.failed and excinfo is not None and excinfo.errisinstance(DataNotFoundError):
        if skips.CI:
            return  # CI sets the data up: its absence is a failure, with the loader's message
        path, line, _ = report.location if hasattr(report, "location") else (report.nodeid, 0, "")
        report.outcome = "skipped"
        message = f"{skips.DATA}: {excinfo.value}; {skips.HOW[skips.DATA]}"
        report.longrepr = (str(path), (line or 0) + 1, f"Skipped: {message}")
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    text = _skip_text(report)
    reason = skips.reason_of(text)
    if reason is None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped for a reason tests/skips.py does not list: {text!r}. Set up what it "
            "needs in `make test`, or add the reason there and to the README's table."
        )
    elif skips.CI and reason in skips.SETUP:
        report.outcome = "failed"
        report.longrepr = f"CI sets this up, so it may not skip: {text}"
    else:
        _SKIPPED[reason] = _SKIPPED.get(reason, 0) + 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _police(outcome.get_result(), call.excinfo)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _police(outcome.get_result(), None)


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED or _VERDICT:
        terminalreporter.write_sep("-", "skipped, by the README's reasons")
        for reason, n in sorted(_SKIPPED.items()):
            how = f" -- to run them: {skips.HOW[reason]}" if reason in skips.HOW else ""
            terminalreporter.write_line(f"{n:>4}  {reason}{how}")
        for verdict in _VERDICT:  # --readme-skips
            terminalreporter.write_line(f"skips {verdict}")


def pytest_addoption(parser):
    parser.addoption(
        "--readme-skips",
        action="store_true",
        help="fail unless the skips are exactly the README's table for this machine and tier",
    )


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("--readme-skips") or config.getoption("collectonly"):
        return
    markexpr = config.getoption("markexpr") or ""
    tier = {"not slow": "make test", "slow": "make test-slow"}.get(markexpr.strip())
    if tier is None:
        _VERDICT.append("FAILED: --readme-skips needs -m 'not slow' or -m slow (a tier)")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    expected = skips.expected_skips(tier)
    if expected != _SKIPPED:
        _VERDICT.append(f"FAILED: the README's table expects {expected} in `{tier}`")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        _VERDICT.append(f"as the README's table says for `{tier}` on this machine")
