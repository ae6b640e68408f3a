# Fresh Linux machine: `make run` launches the app, `make test` runs the whole suite, `make lint` the static checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/chest_xray
WEIGHTS ?= ../shared/weights

.PHONY: run test lint fuzz train bench package clean

$(VENV)/.run-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(VENV)/bin/pneumo-desktop

test: $(VENV)/.test-installed
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

# The loaders under seeded mutations of valid PNG, JPEG, TIFF and DICOM files (make test runs 800 cases).
FUZZ_COUNT ?= 20000
FUZZ_SEED ?= 1
fuzz: $(VENV)/.test-installed
	$(PY) -m tests.fuzz_loaders --count $(FUZZ_COUNT) --seed $(FUZZ_SEED)

$(VENV)/.lint-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[lint]"
	touch $@ $(VENV)/.test-installed $(VENV)/.run-installed

# Static checks, configured in pyproject.toml (the same ones .pre-commit-config.yaml runs on commit).
lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pre-commit validate-config .pre-commit-config.yaml

# Full training of the bundled model in the background (resumable: run it again after a kill).
train: $(VENV)/.test-installed
	bash scripts/train_bundled.sh

bench: $(VENV)/.test-installed
	$(PY) bench/run_all.py

$(VENV)/.package-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[package]"
	touch $@

package: $(VENV)/.package-installed
	$(VENV)/bin/pyinstaller --noconfirm --clean pyinstaller.spec

clean:
	rm -rf build dist
