"""Re-executes the notebooks in place from their percent-format sources (`make notebooks`).

Each notebook is edited as notebooks/<name>.py (jupytext percent format, `# %%` cells) and
committed with its outputs as notebooks/<name>.ipynb, paired through the jupytext metadata
`formats: ipynb,py:percent`. For every such pair this script reads the .py (the source, always:
edits made to the .ipynb alone are overwritten), keeps the .ipynb's cell ids where cells are
unchanged, runs it top to bottom in a scratch folder (so ./mlflow.db and mlruns/ land there, not
in the repository) and writes <name>.ipynb with the new outputs. A cell that raises stops the
run with that cell's error and leaves that .ipynb as it was.

    python notebooks/execute.py [name ...]      # default: every paired notebook
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def paired_sources() -> list[Path]:
    """The .py files of this folder that jupytext pairs with an .ipynb (not this script)."""
    return [
        py
        for py in sorted(HERE.glob("*.py"))
        if "ipynb" in jupytext.read(py).metadata.get("jupytext", {}).get("formats", "").split(",")
    ]


def execute(py: Path, timeout: int) -> None:
    nb = jupytext.read(py)
    ipynb = py.with_suffix(".ipynb")
    if ipynb.exists():  # keep cell ids (and so small diffs) where the cells are unchanged
        nb = combine_inputs_with_outputs(nb, nbformat.read(ipynb, as_version=4), fmt="py:percent")
    with tempfile.TemporaryDirectory(prefix=f"streamkd-{py.stem}-") as run_dir:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,  # no per-cell timestamps in the committed file
            resources={"metadata": {"path": run_dir}},
        ).execute()
    nbformat.validate(nb)
    jupytext.write(nb, ipynb, fmt="ipynb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    sources = paired_sources()
    if args.names:
        by_name = {py.stem: py for py in sources}
        unknown = sorted(set(args.names) - set(by_name))
        if unknown:
            parser.error(f"no paired notebook named {', '.join(unknown)} in {HERE}")
        sources = [by_name[name] for name in args.names]
    # The kernels run in scratch folders: a relative data path must not depend on that.
    if os.environ.get("STREAMKD_DATA"):
        os.environ["STREAMKD_DATA"] = str(Path(os.environ["STREAMKD_DATA"]).resolve())
    # An empty STREAMKD_NOTEBOOK_ROWS (`make notebooks NOTEBOOK_ROWS=`) means "no cut".
    if not os.environ.get("STREAMKD_NOTEBOOK_ROWS"):
        os.environ.pop("STREAMKD_NOTEBOOK_ROWS", None)
    # ipykernel only installs its inline backend (PNG outputs) when MPLBACKEND is unset.
    os.environ.pop("MPLBACKEND", None)
    for py in sources:
        start = time.perf_counter()
        print(f"executing {py.name} -> {py.with_suffix('.ipynb').name}", flush=True)
        execute(py, args.timeout)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
