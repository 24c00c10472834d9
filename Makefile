# Stepguard developer commands. `make test` works on a fresh machine: it creates .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint unit venv clean mutate accelerate

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# The compiled twins of the database door's hot modules and of the version board
# (scripts/accelerate.py, mypyc): rebuilt when a member changes; a twin of other sources is
# never used (the Python source serves).
DOOR := $(addprefix src/stepguard/pgwire/,roundtrip.py tracking.py turn.py session.py)
BOARD := src/stepguard/storage/version_board.py
TWINS := $(VENV)/.twins
$(TWINS): $(STAMP) $(DOOR) $(BOARD) scripts/accelerate.py
	$(PY) scripts/accelerate.py --strict
	touch $(TWINS)

accelerate: $(TWINS)

# The demo needs Stepguard alone (no test or benchmark tools): its own, smaller install.
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

# `make demo IDP=1` also starts the bundled OpenID provider (`stepguard demo --idp`).
demo: $(DEMO_STAMP)
	$(VENV)/bin/stepguard demo $(if $(IDP),--idp,)

# The door's tests run twice: as Python (STEPGUARD_PURE=1), then with the compiled twins.
test: $(STAMP) $(TWINS)
	-bash scripts/install-system-packages
	STEPGUARD_PURE=1 $(PY) -m pytest -q -p no:cacheprovider --cov=stepguard --cov-branch --cov-report= tests/pgdoor tests/unit/test_pg_roundtrip.py tests/unit/test_pg_turn.py tests/unit/test_version_board.py
	STEPGUARD_TWINS=required $(PY) -m pytest -q -p no:cacheprovider --cov=stepguard --cov-branch --cov-append --cov-report=term:skip-covered --cov-report=json:coverage.json tests
	$(PY) scripts/coverage_gate.py coverage.json

# Mutation testing of the security-critical layer (docs/security.md#mutation-testing); not part
# of `test`. While writing tests: MUTATE_ARGS="--keep --only 'stepguard.service.stepup.*'".
mutate: $(STAMP)
	$(PY) scripts/mutate.py $(MUTATE_ARGS)

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP) $(TWINS)
	$(PY) bench/decision.py
	$(PY) bench/factors.py
	$(PY) bench/gateway.py
	$(PY) bench/middleware.py
	$(PY) bench/fleet.py
	$(PY) bench/invalidation.py
	$(PY) bench/load.py
	$(PY) bench/mcp.py
	$(PY) bench/postgres.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage coverage.json mutants
	rm -f src/stepguard/*/_*_compiled*.so src/stepguard/*/_*__mypyc*.so
