# Two commands on a fresh clone: `make run` and `make test`. Both create .venv and install on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test check lint schema bench setup broker-streams

# The virtual environment, (re)installed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,test,bench,otel]'
	touch $@

setup: $(VENV)/.installed

# Everything on this machine with nothing but Python: embedded PostgreSQL in .tokenlife/, the auth service
# on :8000 and a sample resource service on :8001. Ctrl-C stops it. Options go in ARGS (`tokenlife dev --help`
# lists them): make run ARGS="--auth-port 18000 --resource-port 18001".
run: setup
	$(VENV)/bin/tokenlife dev $(ARGS)

# ruff, mypy --strict, then the suite. Without TOKENLIFE_TEST_DATABASE_URL the tests start one embedded
# PostgreSQL; without TOKENLIFE_TEST_AMQP_URL (or Docker) the broker tests skip, saying why.
test: setup lint
	$(PY) -m pytest

check: test

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The stream transport needs RabbitMQ's stream plugin (port 5552): enable it on this machine's broker if off.
broker-streams:
	rabbitmq-plugins is_enabled rabbitmq_stream >/dev/null 2>&1 || rabbitmq-plugins enable rabbitmq_stream

bench: setup
	$(PY) -m bench

schema: setup
	$(PY) -m auth_service.contract > docs/event-schema.json
