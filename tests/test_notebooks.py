"""The notebooks are edited as notebooks/<name>.py (jupytext percent format) and committed as
notebooks/<name>.ipynb with their outputs (`make notebooks` re-executes them). The fast tests
check that each committed .ipynb matches its source and was executed top to bottom without an
error; the slow one executes each source."""

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.stem for p in FOLDER.glob("*.ipynb"))


def cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_notebook_has_its_source():
    """notebooks/ holds <name>.py + <name>.ipynb pairs (and the helper execute.py)."""
    assert NAMES, f"no notebooks in {FOLDER}"
    paired = set()
    for py in FOLDER.glob("*.py"):
        formats = jupytext.read(py).metadata.get("jupytext", {}).get("formats")
        assert formats in ("ipynb,py:percent", None), (py.name, formats)
        if formats:
            paired.add(py.stem)
    assert paired == set(NAMES), "every <name>.ipynb needs its paired <name>.py and vice versa"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source(name):
    source = jupytext.read(FOLDER / f"{name}.py")
    committed = jupytext.read(FOLDER / f"{name}.ipynb")
    assert committed.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert cells(committed) == cells(source), (
        f"{name}.ipynb differs from {name}.py: edit the .py, then `make notebooks`"
    )


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_was_executed(name):
    """Readers see the outputs without running anything: every code cell ran, in order, once."""
    nb = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{name}.ipynb was not executed top to bottom: `make notebooks`"
    )
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    """Executes the source users edit; a cell that raises fails the test with its error."""
    monkeypatch.setenv("STREAMKD_NOTEBOOK_ROWS", "5000")  # river_elec2: a slice of the stream
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = jupytext.read(FOLDER / f"{name}.py")
    NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
