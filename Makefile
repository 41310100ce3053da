# runtally — everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test run lint bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## system-deps: Debian packages the tests use (systemd-analyze, systemd-socket-activate)
system-deps:
	@sh scripts/system-deps.sh

## test: the whole suite (unit, daemon processes, fault suite)
test: $(STAMP) system-deps
	$(BIN)/ruff check runtally tests benchmarks
	$(BIN)/python -m pytest

## run: start the daemon in the foreground on zero-config defaults
run: $(STAMP)
	$(BIN)/runtally daemon

lint: $(STAMP)
	$(BIN)/ruff check runtally tests benchmarks
	$(BIN)/ruff format --check runtally tests benchmarks

## bench: benchmarks/ figures as one JSON object (not part of test)
bench: $(STAMP)
	@$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
