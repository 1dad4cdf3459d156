# make run  : install into .venv and start the sync server (embedded SQLite) with a demo
# make test : install into .venv and run every test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,encryption]' pytest hypothesis mypy import-linter pytest-timeout
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m tidesync.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/lint-imports
	$(BIN)/mypy

types: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

.PHONY: install run test types bench
