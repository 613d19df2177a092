"""The built wheel holds every module of streamkd/, strategies/ and streams/ (an editable
install hides a missing package: it imports from the source tree)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {
    "streamkd": "streamkd",
    "strategies": "streamkd/strategies",
    "streams": "streamkd/streams",
}


def test_wheel_holds_every_module(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools leaves build/ and egg-info behind
    for name in (*MAPPED, "pyproject.toml", "setup.py", "README.md"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("streamkd-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in MAPPED.items()
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert {"streamkd/integrations/avalanche.py", "streamkd/integrations/river.py"} <= expected
    assert expected - shipped == set(), f"missing from the wheel: {sorted(expected - shipped)}"
