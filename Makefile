# The two set-up commands of the README. Both create .venv and install pinned dependencies if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
export COMPRESSKIT_VENV := $(VENV)

.PHONY: demo test lint bootstrap

bootstrap:
	@bash scripts/bootstrap.sh

## demo: the main job on the embedded default (MiniLM-L6 teacher, SST-2 sample, CPU)
demo: bootstrap
	$(VENV)/bin/compresskit demo

## test: ruff (lint + format), mypy, then the test suite
test: bootstrap lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
