# One command runs every check: `make check`. Tools come from .venv when it exists.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: check lint test schema bench

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
