"""Several auth URLs per resource instance: when the current auth instance dies, the next one serves."""

from __future__ import annotations

import pytest

from tests.conftest import add_user, start_auth_server
from tests.integration.test_feed import eventually, login, logout, resource_app, resource_settings, whoami

pytestmark = pytest.mark.integration

ISSUER = "http://tokenlife.test"  # one issuer for both auth instances, as in a deployment behind one name


async def test_a_dead_auth_instance_fails_over_to_the_next_for_long_poll_snapshot_and_jwks(
    database_url: str,
) -> None:
    first, first_url = start_auth_server(database_url, TOKENLIFE_ISSUER=ISSUER)
    second, second_url = start_auth_server(database_url, TOKENLIFE_ISSUER=ISSUER)
    try:
        await add_user(database_url, "fay@example.com")
        token = await login(first_url, "fay@example.com")
        settings = resource_settings(
            "", "", "unused", auth_urls=(first_url, second_url), issuer=ISSUER, max_staleness=2.0
        )
        assert settings.auth_urls == (first_url, second_url)
        async with resource_app(settings) as (client, rt):

            async def status_is(code: int) -> bool:
                return (await whoami(client, token)).status_code == code

            await eventually(lambda: status_is(200), "the token accepted through the first auth instance")
            assert (await client.get("/readyz")).json()["auth_url"] == first_url

            first.kill()
            first.wait(timeout=10)
            await logout(second_url, token)
            # The long-poll fails over to the second instance and brings the logout.
            await eventually(lambda: status_is(401), "the logout refused through the second instance")
            ready = (await client.get("/readyz")).json()
            assert ready["auth_url"] == second_url
            assert ready["ready"] is True
            metrics = (await client.get("/metrics")).text
            assert f'tokenlife_auth_url_current{{url="{second_url}"}} 1.0' in metrics
            assert rt.client.failovers >= 1

            # A snapshot (a fresh catch-up) and the JWKS come from the second instance too.
            await rt.feed.sync_from_log(snapshot=True)
            assert await rt.client.jwks()
            fresh = await login(second_url, "fay@example.com")
            assert (await whoami(client, fresh)).status_code == 200
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()


def test_auth_url_alone_is_a_list_of_one_and_auth_urls_parse_from_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resource_service.settings import ResourceSettings

    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    monkeypatch.setenv("TOKENLIFE_AUTH_URL", "http://a.test/")
    assert ResourceSettings().auth_urls == ("http://a.test",)
    monkeypatch.delenv("TOKENLIFE_AUTH_URL")
    monkeypatch.setenv("TOKENLIFE_AUTH_URLS", '["http://a.test", "http://b.test/"]')
    found = ResourceSettings()
    assert (found.auth_url, found.auth_urls) == ("http://a.test", ("http://a.test", "http://b.test"))
    assert found.issuer == "http://a.test"
