# Sluice: `make run` starts everything locally, `make test` runs the whole test suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench up down redis-server postgresql test-tools clean lock \
	test-redis-switches test-redis-next codex-check

# The venv installs exactly requirements-dev.lock (hash-checked), then the project itself,
# editable, with no dependencies of its own: what pyproject.toml asks for comes from the lock.
$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# The lock files, exact versions with hashes for Python 3.11 on Linux, resolved from
# pyproject.toml by uv (its version pinned here, in a venv of its own):
#   requirements-dev.lock  run-time + the dev extra: what `make` and .ci/run install
#   requirements.lock      run-time only: what the Dockerfile installs
# After changing a dependency in pyproject.toml, run `make lock` and commit pyproject.toml with
# both lock files. Pins that still satisfy pyproject.toml are kept; `make lock UPGRADE=1` moves
# every pin to the newest release pyproject.toml allows. The run-time lock is resolved under
# the dev lock's pins (-c), so the image runs the very versions the tests ran against.
UV_VERSION := 0.13.10
LOCK_VENV := .venv-lock
UV := $(LOCK_VENV)/bin/uv
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --generate-hashes --custom-compile-command 'make lock' --quiet $(if $(UPGRADE),--upgrade)

$(UV):
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q uv==$(UV_VERSION)

lock: $(UV)
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock
	$(UV) pip compile pyproject.toml -c requirements-dev.lock $(LOCK_FLAGS) -o requirements.lock

# Debian's redis-server, installed when missing (CI machines start without it).
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null

# What the tests drive besides Redis: Debian's prometheus, chromium and chromium-driver.
test-tools:
	@command -v prometheus >/dev/null && command -v chromium >/dev/null \
	  && command -v chromedriver >/dev/null || { \
	  echo "installing prometheus chromium chromium-driver"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq prometheus chromium chromium-driver >/dev/null; }

# Debian's postgresql, installed when missing: the tests and `make bench` start their own
# servers from its binaries (/usr/lib/postgresql/<major>/bin), as the postgres user when root.
postgresql:
	@compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { \
	  echo "installing postgresql"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }
	@compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null

run: $(STAMP) redis-server
	$(BIN)/python -m scripts.run_local

# The tests keep Python's bytecode (and pytest's rewritten test modules) in __pycache__ (ignored
# by git) even where PYTHONDONTWRITEBYTECODE is set: without it every run, every worker of
# test-fast and every service an e2e test starts compiles the code again (measured: collecting
# the fast layer 3.7 s of CPU against 1.9 s; importing the services 0.6 s against 0.4 s).
test test-fast: export PYTHONDONTWRITEBYTECODE :=

test: $(STAMP) redis-server postgresql test-tools
	$(BIN)/pytest -q

# Four workers on two cores: the fast layer spends much of its time waiting (timers, servers).
# Each worker has a redis-server and PostgreSQL of its own (session fixtures are per worker).
# Measured on 2 cores, load 1-4: -n 4 took 43.2, 43.4 and 48.2 s, -n 3 49.9 and 52.1 s, for
# about the same CPU (63-68 s against 63-66 s).
test-fast: $(STAMP) redis-server postgresql
	$(BIN)/pytest -q -n 4 --dist worksteal -m "not e2e and not chaos" tests/unit tests/integration

# The Redis tests with each override of redis-py switched off in turn (REDIS_OVERRIDES,
# shared/redis_conn.py): the plain redis-py path must pass them too.
REDIS_TESTS := tests/integration/test_redis_*.py tests/integration/test_coalesce.py
test-redis-switches: $(STAMP) redis-server
	@set -e; for name in $$($(BIN)/python -c \
	    'from shared.config import REDIS_OVERRIDES; print(*REDIS_OVERRIDES)'); do \
	  echo "REDIS_OVERRIDES=-$$name"; \
	  REDIS_OVERRIDES=-$$name $(BIN)/pytest -q $(REDIS_TESTS); \
	done

# The Redis tests against the next minor of redis-py, in a throwaway venv, before the pin in
# pyproject.toml moves (shared/redis_fence.py lists what of redis-py's internals we touch).
REDIS_NEXT ?= 8.3
test-redis-next: redis-server
	@set -e; tmp=$$(mktemp -d); venv=$$tmp/venv; trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m venv $$venv; \
	$$venv/bin/pip download -q --no-deps -d $$tmp/next 'redis==$(REDIS_NEXT).*'; \
	$$venv/bin/pip install -q -e '.[dev]'; \
	$$venv/bin/pip install -q --no-deps $$tmp/next/redis-*; \
	$$venv/bin/python -c 'import redis; print("redis-py", redis.__version__)'; \
	$$venv/bin/pytest -q $(REDIS_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check services shared tests scripts bench harness
	$(BIN)/mypy services shared scripts bench harness

# The Codex CLI (@openai/codex from npm, into .codex-check/) runs `codex exec "say hello"`
# through Sluice's /v1/responses against the mock, the stack started as processes
# (scripts/codex_check.py). Needs node and npm (apt-get install nodejs npm).
codex-check: $(STAMP) redis-server
	$(BIN)/python -m scripts.codex_check

bench: $(STAMP) redis-server postgresql
	$(BIN)/python -m bench

up:
	docker compose up --build -d

down:
	docker compose down

clean:
	rm -rf $(VENV) $(LOCK_VENV) data .pytest_cache .mypy_cache .ruff_cache
