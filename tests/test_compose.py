"""compose.yaml is valid against the Compose specification's JSON schema, and keeps secrets out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# In the repository's own test data (with its licence note in tests/data/README.md): nothing outside the
# checkout, so the test runs on a fresh clone.
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> Any:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_schema_is_kept_in_the_repository_with_its_licence_note() -> None:
    assert SCHEMA.is_relative_to(ROOT)
    assert json.loads(SCHEMA.read_text())["title"]
    note = (SCHEMA.parent / "README.md").read_text()
    assert "compose-spec.json" in note
    assert "Apache License 2.0" in note


def test_compose_file_follows_the_compose_specification(compose: Any) -> None:
    schema = json.loads(SCHEMA.read_text())
    # The schema names its draft by an id jsonschema does not map; it is draft 7.
    jsonschema.Draft7Validator(schema).validate(compose)


def test_compose_runs_every_tokenlife_process_in_production_mode(compose: Any) -> None:
    services = compose["services"]
    assert {"postgres", "rabbitmq", "auth", "resource"} <= set(services)
    for name in ("auth", "resource"):
        assert services[name]["environment"]["TOKENLIFE_ENV"] == "prod"
        assert services[name]["deploy"]["replicas"] >= 2


def test_compose_secrets_have_no_defaults() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for secret in ("TOKENLIFE_DB_PASSWORD", "TOKENLIFE_AMQP_PASSWORD", "TOKENLIFE_KEY_ENCRYPTION_KEY"):
        assert f"${{{secret}:?" in text
        assert f"${{{secret}:-" not in text
    assert "guest" not in text
