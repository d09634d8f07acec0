# Two commands on a fresh clone: `make run` and `make test`. Both create .venv and install on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test check lint schema bench setup

# The virtual environment, (re)installed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,test,bench]'
	touch $@

setup: $(VENV)/.installed

# Everything on this machine with nothing but Python: embedded PostgreSQL in .tokenlife/, the auth service
# on :8000 and a sample resource service on :8001 (`tokenlife dev --help` for ports and RabbitMQ). Ctrl-C stops it.
run: setup
	$(VENV)/bin/tokenlife dev

# ruff, mypy --strict, then the suite. Without TOKENLIFE_TEST_DATABASE_URL the tests start one embedded
# PostgreSQL; without TOKENLIFE_TEST_AMQP_URL (or Docker) the broker tests skip, saying why.
test: setup lint
	$(PY) -m pytest

check: test

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) -m bench

schema: setup
	$(PY) -m auth_service.contract > docs/event-schema.json
