# Every target bootstraps itself: a fresh machine needs only make, bash and Python >= 3.12.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SIZE    ?= 64MiB

.PHONY: install demo test lint typecheck unit bench nat clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $$(bash scripts/find-python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/hotlink demo --size $(SIZE)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

test: install system-deps lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

nat: install system-deps
	$(VENV)/bin/pytest -q -m nat tests/nat

bench: install system-deps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
