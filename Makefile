# One command runs every check: `make check`. Tools come from .venv when it exists.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: check lint test schema bench run

# The whole stack in dev mode on this machine's PostgreSQL and RabbitMQ: auth service (with its relay) on
# :8000, a sample resource service on :8001. Ctrl-C stops both.
run: export TOKENLIFE_ENV = dev
run:
	$(PY) -m tokenlife migrate --create-database
	@trap 'trap - INT TERM EXIT; kill 0' INT TERM EXIT; \
	$(PY) -m tokenlife auth serve --port 8000 & \
	$(PY) -m tokenlife resource serve --port 8001 & \
	wait

check: lint test

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test:
	$(PY) -m pytest

bench:
	$(PY) -m bench

schema:
	$(PY) -m auth_service.contract > docs/event-schema.json
