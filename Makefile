# Legato — every target sets itself up: a fresh machine needs only Python 3.11+.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install chromium run test test-all soak lint format bench clean container-runtime

install: $(STAMP) chromium

# The web console's browser tests (pytest -m browser) drive the OS's headless Chromium: install it when
# missing and this is root on a Debian-like machine (CI); otherwise say how, and those tests fail.
chromium:
	@if ! { test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get) for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
	    { apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	  else echo "note: chromium and chromium-driver are missing (apt-get install chromium chromium-driver):" \
	    "the browser tests (pytest -m browser) will fail"; fi; fi

$(STAMP): pyproject.toml examples/plugin/pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The example step-type plugin (examples/plugin), installed as a team would install theirs.
	$(BIN)/python -m pip install --quiet -e examples/plugin
	touch $(STAMP)

run: install
	$(BIN)/legato dev

# CI runs `make test`: everything but the few heaviest chaos/scale tests (marked soak), on two workers
# (most tests wait on real services more than they compute), to stay within its time budget; tests
# that share a machine-wide resource are grouped onto one worker (xdist_group). `make soak` runs the
# soak tests, `make test-all` everything.
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -m "not soak" -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

soak: install
	$(BIN)/python -m pytest -q -m soak --durations=0

test-all: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

# The container runtime the `container` step tests (marked container; skipped without it) and
# bench/steps.py use: podman and busybox-static from the OS packages (Debian/Ubuntu, as root).
container-runtime: install
	command -v podman >/dev/null && command -v busybox >/dev/null && command -v runc >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman busybox-static runc; }
	$(BIN)/python -m tests.support.container_probe

lint: install
	$(BIN)/ruff check libs services tests bench examples
	$(BIN)/ruff format --check libs services tests bench examples
	$(BIN)/mypy libs services

format: install
	$(BIN)/ruff check --fix libs services tests bench examples
	$(BIN)/ruff format libs services tests bench examples

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
