# weightcli: every target sets itself up from nothing (make install creates .venv).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest samples bench clean

install: $(STAMP)

# Chromium (for the report page's browser tests) installs meanwhile, with apt-get.
# (setup.py and _native.c too: a changed kernel is compiled again)
$(STAMP): pyproject.toml setup.py weightcli/_native.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	bash scripts/install_browser.sh & browser=$$!; \
	$(BIN)/python -m pip install --quiet --upgrade pip \
	&& $(BIN)/python -m pip install --quiet -e '.[dev,tf,remote,dask]'; rc=$$?; \
	wait $$browser; exit $$rc
	touch $(STAMP)

demo: install
	@bash scripts/demo.sh

test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check weightcli tests scripts benchmarks setup.py
	$(BIN)/ruff format --check weightcli tests scripts benchmarks setup.py

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -q -n 2

samples: install
	$(BIN)/python scripts/make_samples.py sample_models

bench: install
	@command -v h5diff >/dev/null || echo "note: h5ls/h5diff not found (apt-get install hdf5-tools); those baselines are skipped"
	$(BIN)/python benchmarks/make_data.py
	cd benchmarks && ../$(BIN)/python run.py

clean:
	rm -rf $(VENV) build *.egg-info weightcli/*.so .pytest_cache .mypy_cache .ruff_cache .hypothesis
