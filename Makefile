# The README's two commands: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check --no-compile -q
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench install install-full clean

# .core: what the demo needs; .full: + test, lint and Avalanche tools (one resolver run each)
$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e . $(TORCH)
	touch $@

$(VENV)/.full: $(VENV)/.core
	$(PIP) -e ".[dev,avalanche]" $(TORCH)
	touch $@

install: $(VENV)/.core
install-full: $(VENV)/.full

# Main job: the baselines on the embedded Split-Digits stream, logged to ./mlflow.db
demo: $(VENV)/.core
	$(VENV)/bin/streamkd compare --stream split-digits --strategies naive,er,er_ace,mir \
		--memory 200 --seeds 0,1,2 --json results/demo.json

test: $(VENV)/.full
	$(PY) -m pytest -m "not slow" -q

lint: $(VENV)/.full
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(VENV)/.full
	$(PY) benchmarks/overhead.py --json results/overhead.json

clean:
	rm -rf $(VENV) results mlflow.db mlruns mlartifacts
