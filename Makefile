# Two commands for a new user: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: install demo test test-fast lint schemas serve benchmarks clean

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
	$(BIN)/python -m cancerseg_ray.serve.openapi schemas/openapi.json

serve: install
	$(BIN)/python jobs/serve_app.py --config configs/serve/local.yaml

benchmarks: install
	$(BIN)/python benchmarks/ingest_benchmark.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serve_load.py --requests 500 --concurrency 16 --tile-size 64

clean:
	rm -rf $(VENV) outputs .pytest_cache
