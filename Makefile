# One command to run, one to test:  `make run`, `make test`.
#
# Works on a fresh Debian with Python 3.11 (Debian's /usr/bin/python3 or pyenv's):
#   make run                                   creates .venv, installs, runs `ota run`
#   OTA_MQTT_PORT=18830 OTA_HTTP_PORT=18000 make run   (OTA_* variables pass through)
#   make test                                  also installs Mosquitto with apt if missing
#   make lint                                  ruff + mypy (strict); not part of `make test`
#   make bench                                 the benchmark suite (bench/, ~15 min), writes bench/RESULTS.md

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
# Touched after a successful `pip install`; reinstall only when pyproject.toml is newer.
INSTALL_STAMP := $(VENV)/.install-stamp
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: venv install system-deps run test lint bench
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

venv: $(VENV)/pyvenv.cfg

# pyvenv.cfg is a plain file written by `python -m venv` (bin/python is a symlink whose
# mtime belongs to the interpreter), so it is the reliable "venv exists" marker.
$(VENV)/pyvenv.cfg:
	@command -v $(PYTHON) >/dev/null || { \
	  echo "make: $(PYTHON) not found; install Python 3.11 (Debian: apt-get install python3)" >&2; \
	  echo "make: or name an interpreter with  make PYTHON=/path/to/python3.11 ..." >&2; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { \
	  echo "make: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11 or newer is required." >&2; \
	  echo "make: pick another interpreter with  make PYTHON=/path/to/python3.11 ..." >&2; \
	  exit 1; }
	@PYTHON=$(PYTHON) scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)

install: $(INSTALL_STAMP)

$(INSTALL_STAMP): pyproject.toml $(VENV)/pyvenv.cfg
	$(VENV_BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

system-deps:
	@scripts/system-deps.sh mosquitto postgresql chromium

run: install
	$(VENV_BIN)/ota run $(RUN_ARGS)

test: install system-deps
	$(VENV_BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml $(INSTALL_STAMP)
	$(VENV_BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
	@touch $@

# By hand only, never in CI: it saturates the machine for ~15 minutes.
bench: $(BENCH_STAMP)
	@scripts/system-deps.sh mosquitto postgresql nginx
	$(VENV_BIN)/python -m bench.run $(BENCH_ARGS)

# Fast (about a second), but deliberately not a prerequisite of `test`: a style finding
# should not hide test results. CI can run `make lint test`.
lint: install
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/mypy
	$(VENV_BIN)/mypy --explicit-package-bases tests/conftest.py tests/support tests/test_infra.py
