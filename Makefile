# Two commands on a fresh machine: `make up` (stack) and `make test` (tests). Both create .venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install up test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -e '.[test]'
	touch $@

up: install
	$(BIN)/gigaam-transcriber up

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.engine

clean:
	rm -rf $(VENV) build *.egg-info
