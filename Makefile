# runtally — everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# make run needs the package and its extras, not the test extra (playwright, ruff...).
RUN_STAMP := $(VENV)/.installed-run

# make dist: where the wheel and sdist go.
DIST ?= dist
# make install: a venv of its own (pipx-style) and where the commands are linked.
INSTALL_VENV ?= $(HOME)/.local/share/runtally/venv
INSTALL_BIN  ?= $(HOME)/.local/bin

.PHONY: test run lint bench profile dist install uninstall system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(RUN_STAMP)

## system-deps: Debian packages the tests use (systemd-analyze, systemd-socket-activate,
## chromium, nodejs + npm for the Node.js client)
system-deps:
	@sh scripts/system-deps.sh

## test: the whole suite (unit, daemon processes, fault suite), then the
## Node.js client's tests (node --test) against a daemon from this venv
test: $(STAMP) system-deps
	$(BIN)/ruff check runtally tests benchmarks
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python -m pytest
	cd clients/node && RUNTALLY_PYTHON='$(abspath $(BIN))/python' npm test

## run: start the daemon in the foreground on zero-config defaults
run: $(RUN_STAMP)
	$(BIN)/runtally daemon

lint: $(STAMP)
	$(BIN)/ruff check runtally tests benchmarks
	$(BIN)/ruff format --check runtally tests benchmarks

## bench: benchmarks/ figures as one JSON object (not part of test)
bench: $(STAMP)
	@$(BIN)/python benchmarks/run_all.py

## profile: where shape (b)'s time goes, by py-spy and perf (benchmarks/profile_b.py);
## py-spy is installed here, perf is Debian's linux-perf (reported missing if absent)
profile: $(STAMP)
	$(BIN)/python -m pip install --quiet 'py-spy>=0.3.14'
	@$(BIN)/python benchmarks/profile_b.py

## dist: a wheel and an sdist of this checkout in $(DIST)/ (python -m build).
## --no-isolation builds with the venv's own setuptools (the test extra pins the
## backend pyproject asks for), so it needs no network; the wheel is built from
## the sdist, so a file missing from the sdist is missing from the wheel too.
dist: $(STAMP)
	rm -rf $(DIST) build
	$(BIN)/python -m build --no-isolation --outdir $(DIST) .
	rm -rf build

## install: the wheel from `make dist` in a venv of its own ($(INSTALL_VENV)),
## runtally and runtallyd linked into $(INSTALL_BIN). Re-run to upgrade.
install: dist
	test -x '$(INSTALL_VENV)/bin/python' || $(PYTHON) -m venv '$(INSTALL_VENV)'
	set -e; whl=$$(ls $(DIST)/runtally-*-py3-none-any.whl); \
	  '$(INSTALL_VENV)/bin/python' -m pip install --quiet --force-reinstall --no-deps "$$whl"; \
	  '$(INSTALL_VENV)/bin/python' -m pip install --quiet "$$whl[all]"
	mkdir -p '$(INSTALL_BIN)'
	ln -sfn '$(abspath $(INSTALL_VENV))/bin/runtally' '$(INSTALL_BIN)/runtally'
	ln -sfn '$(abspath $(INSTALL_VENV))/bin/runtallyd' '$(INSTALL_BIN)/runtallyd'
	@'$(INSTALL_BIN)/runtally' --version
	@case ":$$PATH:" in *':$(INSTALL_BIN):'*) ;; \
	  *) echo 'note: $(INSTALL_BIN) is not on PATH';; esac

## uninstall: remove what `make install` put in place
uninstall:
	rm -f '$(INSTALL_BIN)/runtally' '$(INSTALL_BIN)/runtallyd'
	test ! -f '$(INSTALL_VENV)/pyvenv.cfg' || rm -rf '$(INSTALL_VENV)'

clean:
	rm -rf $(VENV) $(DIST) .pytest_cache .hypothesis build *.egg-info
