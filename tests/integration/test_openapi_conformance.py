"""The OpenAPI document against the running auth service: schemathesis generates valid and invalid requests
from the document and every answer must match it (status, content type, headers, body schema), with no 5xx,
and a request the document forbids must be refused with a documented 4xx."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

# Imported here, at collection, not lazily inside the test by from_url: pytest rewrites schemathesis's modules
# as they are imported (it is a pytest plugin), and a CPython 3.11 compile once failed mid-test with "AST
# constructor recursion depth mismatch" while earlier tests' garbage was being collected.
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401

from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, running_auth_server
from tests.e2e.test_resource_e2e import ResourceProcess, wait_for
from tests.ssf_receiver import RECEIVER_A, clients_json

pytestmark = pytest.mark.integration

EMAIL = "conformance@example.com"
EXAMPLES = 8  # per operation and generation mode: bounded, so the whole run stays well under a minute
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]
# Run last: the password change's wrong guesses throttle the account, and a logout revokes the bearer token.
LAST = ("POST /v1/auth/password", "POST /v1/auth/logout")


@pytest.fixture
def auth_process(database_url: str) -> Iterator[str]:
    asyncio.run(add_user(database_url, EMAIL, scopes="read write"))
    with running_auth_server(database_url, TOKENLIFE_CLIENTS=clients_json()) as base:
        yield base


def _credentials(base: str) -> dict[str, dict[str, str]]:
    tokens = httpx.post(
        f"{base}/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
    ).json()
    basic = base64.b64encode(f"{SERVICE_CLIENT[0]}:{SERVICE_CLIENT[1]}".encode()).decode()
    receiver = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"}, auth=RECEIVER_A)
    return {
        "OAuth2PasswordBearer": {"Authorization": f"Bearer {tokens['access_token']}"},
        "HTTPBasic": {"Authorization": f"Basic {basic}"},
        "SSFReceiver": {"Authorization": f"Bearer {receiver.json()['access_token']}"},
    }


def _scheme(operation: Any) -> str | None:
    requirements = operation.definition.raw.get("security", [])
    names = {name for requirement in requirements for name in requirement}
    return next(iter(names), None)


def _exercise(operation: Any, mode: GenerationMode, base: str, credentials: dict[str, str]) -> set[int]:
    """Send generated requests of one mode to one operation; every answer must match the document."""
    checks = [getattr(schemathesis.checks, name) for name in CHECKS]
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # Real credentials, unless the case's negation is in its headers (it dropped or broke Authorization):
        # that one is sent without, and must be refused.
        negated_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        sent = {} if negated_headers else credentials
        _shorten_long_poll(case)
        statuses.add(case.call_and_validate(base_url=base, headers=sent, checks=checks).status_code)

    try:
        run()
    except Unsatisfiable:
        # Nothing to negate: no parameter or body with a constraint to break (GET /healthz, {sid}).
        assert mode is GenerationMode.NEGATIVE, operation.label
    return statuses


def _shorten_long_poll(case: Any) -> None:
    """A valid `wait` holds the answer up to 30 s when nothing commits: keep it short, so the run stays short.

    The value stays valid (and of its generated type), so what is checked does not change.
    """
    query = case.query if isinstance(case.query, dict) else {}
    wait = query.get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 30:
        query["wait"] = min(wait, 0.2)


def test_every_answer_matches_the_document(auth_process: str) -> None:
    config = schemathesis.Config.from_dict(
        {
            "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "404", "413", "429"]}},
            # Unknown query parameters are ignored, as HTTP APIs do; the document cannot say so.
            "generation": {"allow-extra-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{auth_process}/openapi.json", config=config)
    credentials = _credentials(auth_process)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    operations.sort(key=lambda op: LAST.index(op.label) + 1 if op.label in LAST else 0)
    assert len(operations) >= 14
    seen: dict[str, set[int]] = {}
    for operation in operations:
        scheme = _scheme(operation)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            statuses = _exercise(operation, mode, auth_process, credentials[scheme] if scheme else {})
            seen.setdefault(operation.label, set()).update(statuses)
    # The run reached every operation, and the credentials were good: not only refusals were checked.
    assert set(seen) == {op.label for op in operations}
    for label in ("GET /v1/sessions", "GET /v1/events", "GET /v1/revocations", "POST /oauth/introspect"):
        assert 200 in seen[label], (label, seen[label])


def test_every_answer_of_the_resource_service_matches_its_document(database_url: str) -> None:
    """The sample resource service (long-poll alone, no broker): its bearer routes and their refusals."""
    asyncio.run(add_user(database_url, EMAIL, scopes="read write"))
    with running_auth_server(database_url) as auth:
        resource = ResourceProcess(auth, "", "unused")
        resource.start()
        try:
            wait_for(lambda: httpx.get(f"{resource.base}/readyz").status_code == 200, "the resource is ready")
            login = {"grant_type": "password", "username": EMAIL, "password": PASSWORD}
            tokens = httpx.post(f"{auth}/oauth/token", data=login).json()
            token = {"Authorization": f"Bearer {tokens['access_token']}"}  # no receiver on this server
            schema = schemathesis.openapi.from_url(
                f"{resource.base}/openapi.json",
                config=schemathesis.Config.from_dict(
                    {
                        "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403"]}},
                        "generation": {"allow-extra-parameters": False},
                    }
                ),
            )
            seen: dict[str, set[int]] = {}
            for result in schema.get_all_operations():
                assert isinstance(result, Ok), result
                operation = result.ok()
                if operation.path.startswith("/v1/ticks"):
                    # Streams that last as long as the token: tests/integration/test_live_connections.py.
                    continue
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    seen.setdefault(operation.label, set()).update(
                        _exercise(operation, mode, resource.base, token)
                    )
            # The user holds read and write, not admin: the one route answers 200, the other 403.
            assert seen == {"GET /v1/whoami": seen["GET /v1/whoami"], "GET /v1/admin": seen["GET /v1/admin"]}
            assert 200 in seen["GET /v1/whoami"], seen
            assert 403 in seen["GET /v1/admin"], seen
        finally:
            resource.kill()
