# Two commands for a new user: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: install demo test test-fast lint schemas benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python jobs/make_shards.py --config configs/demo/ingest.yaml --output $(DEMO_OUT)/shards
	$(BIN)/python jobs/train_all.py --config configs/demo/train.yaml --shards $(DEMO_OUT)/shards --output $(DEMO_OUT)/runs
	$(BIN)/python jobs/evaluate.py --config configs/demo/evaluate.yaml --shards $(DEMO_OUT)/shards --runs $(DEMO_OUT)/runs --output $(DEMO_OUT)/report
	@echo "Demo report: $(DEMO_OUT)/report/report.md"

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check cancerseg_ray jobs tests benchmarks

schemas: install
	$(BIN)/python -m cancerseg_ray.schemas_export schemas

benchmarks: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
