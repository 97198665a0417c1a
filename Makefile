# boinc-pipeline: the targets CI calls are the ones a developer calls.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv services lint typecheck test test-fast demo demo-celery bench clean

help:
	@echo "make demo       set up and run a sweep end to end on embedded defaults"
	@echo "make demo-celery  the same sweep through Celery workers (needs Redis; REDIS=URL)"
	@echo "make test       set up and run the whole test suite (lint, types, pytest)"
	@echo "make test-fast  the same without the tests marked slow"
	@echo "make bench      run the benchmarks in bench/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

services:
	bash tests/services.sh

lint: $(STAMP)
	$(BIN)/ruff check pipeline workers tests bench
	$(BIN)/ruff format --check pipeline workers tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services lint typecheck
	$(BIN)/python -m pytest --durations=25

test-fast: $(STAMP) services lint typecheck
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo

demo-celery: $(STAMP)
	$(BIN)/python -m pipeline.demo --celery $(if $(REDIS),--redis $(REDIS))

bench: $(STAMP) services
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-data bench/out .mypy_cache .ruff_cache .pytest_cache
