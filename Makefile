# Two commands on a fresh machine: `make up` (stack) and `make test` (tests). Both create .venv.
# Installs are pinned by constraints.txt (exact versions); `make lock` regenerates it on purpose.
SUPPORTED := python3.11 python3.12 python3.13
runs = $(shell $(1) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12), (3, 13))' >/dev/null 2>&1 && echo $(1))
PY ?= $(firstword $(foreach p,$(SUPPORTED),$(call runs,$(p))))
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= test
PIP_INSTALL = $(BIN)/pip install -q -c constraints.txt

.PHONY: install up test test-fast test-pythons bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -n "$(PY)" || { echo "No supported Python found: install one of $(SUPPORTED)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(PIP_INSTALL) -e '.[$(EXTRAS)]'
	touch $@

up: install
	$(BIN)/gigaam-transcriber up

test: install
	$(BIN)/pytest -q

# Unit tier only (no broker, no stack): the quick loop while editing.
test-fast: install
	$(BIN)/pytest -q -m unit

# The unit tier under every supported interpreter on this machine, each in its own venv.
test-pythons:
	@for p in $(SUPPORTED); do \
	  $$p -c '' >/dev/null 2>&1 || { echo "skip $$p: not installed (with pyenv: PYENV_VERSION=3.11.7:3.12.1:3.13.0)"; continue; }; \
	  $(MAKE) --no-print-directory VENV=.venv-$$p PY=$$p test-fast || exit 1; \
	done

bench: install
	$(BIN)/python -m bench.engine

# Fresh venv with the newest releases pyproject.toml allows (torch and torchaudio as one matched
# pair, TORCH=x.y.z), the suite on it, and only then the new constraints.txt.
TORCH ?= $(shell sed -n 's/^torch==//p' constraints.txt)
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q -U pip
	.venv-lock/bin/pip install -q torch==$(TORCH) torchaudio==$(TORCH) -e '.[test,bench]'
	.venv-lock/bin/pytest -q
	{ sed -n '1,/^# Regenerate/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-* build *.egg-info
