"""Settings refuse unsafe defaults outside dev mode, and say which setting and why."""

from __future__ import annotations

import json
import os

import pytest

from auth_service.accounts.clients import secret_hash
from auth_service.settings import DEV_AMQP_URL, AuthSettings, UnsafeSettings
from auth_service.tokens.keys import new_key_encryption_key
from resource_service.settings import ResourceSettings, UnsafeResourceSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_")]:
        monkeypatch.delenv(name, raising=False)


def test_production_refuses_missing_database_and_broker_urls() -> None:
    with pytest.raises(UnsafeSettings) as info:
        AuthSettings()
    assert "TOKENLIFE_DATABASE_URL is not set" in str(info.value)
    assert "TOKENLIFE_AMQP_URL is not set" in str(info.value)
    assert "TOKENLIFE_ISSUER is not set" in str(info.value)
    assert "TOKENLIFE_KEY_ENCRYPTION_KEY is not set" in str(info.value)


def test_production_refuses_short_service_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_SERVICE_CLIENTS", '{"orders": "short"}')
    with pytest.raises(UnsafeSettings, match="TOKENLIFE_SERVICE_CLIENTS has a secret shorter"):
        AuthSettings()


@pytest.mark.parametrize("url", ["amqp://guest:guest@broker:5672/", "amqp://broker:5672/"])
def test_production_refuses_the_guest_broker_account(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", url)
    with pytest.raises(UnsafeSettings, match="TOKENLIFE_AMQP_URL uses RabbitMQ's well-known guest"):
        AuthSettings()


def test_production_accepts_explicit_safe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", "amqps://tokenlife:s3cret@broker:5671/")
    monkeypatch.setenv("TOKENLIFE_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("TOKENLIFE_KEY_ENCRYPTION_KEY", new_key_encryption_key())
    settings = AuthSettings()
    assert settings.env == "prod"
    assert "s3cret" not in repr(settings)


def test_dev_mode_fills_local_defaults_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = AuthSettings(env="dev")
    assert settings.amqp_url.get_secret_value() == DEV_AMQP_URL
    assert settings.database_url.startswith("postgresql+asyncpg://")
    settings.announce()
    assert "DEV MODE" in caplog.text


def test_production_without_a_broker_is_accepted_with_the_relay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("TOKENLIFE_KEY_ENCRYPTION_KEY", new_key_encryption_key())
    with pytest.raises(UnsafeSettings, match="TOKENLIFE_RELAY_ENABLED=false"):
        AuthSettings()
    monkeypatch.setenv("TOKENLIFE_RELAY_ENABLED", "false")
    assert AuthSettings().amqp_url.get_secret_value() == ""


def test_a_resource_service_without_a_broker_is_valid_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_AUTH_URL", "https://auth.example.com")
    monkeypatch.setenv("TOKENLIFE_SERVICE_CLIENT_ID", "orders")
    monkeypatch.setenv("TOKENLIFE_SERVICE_CLIENT_SECRET", "a-long-enough-secret-0123")
    settings = ResourceSettings()
    assert settings.amqp_url.get_secret_value() == ""  # the feed long-polls the log alone
    assert ResourceSettings(env="dev").amqp_url.get_secret_value() == ""  # dev no longer assumes a broker


DEV_HASH = secret_hash("dev-service-secret")


def _production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", "amqps://tokenlife:s3cret@broker:5671/")
    monkeypatch.setenv("TOKENLIFE_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("TOKENLIFE_KEY_ENCRYPTION_KEY", new_key_encryption_key())


def test_dev_registers_the_console_as_the_default_public_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    registry = AuthSettings().client_registry
    assert registry.public_client(None) == registry.public_client("tokenlife-console")
    name, console = registry.public_client(None) or ("", None)
    assert name == "tokenlife-console"
    assert console is not None
    assert console.grant_types == ("password", "refresh_token")
    assert registry.authenticate("dev-service", "dev-service-secret")


def test_production_registers_only_what_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch)
    secret = "a-service-secret-long-enough"
    monkeypatch.setenv(
        "TOKENLIFE_CLIENTS", json.dumps({"web": {"type": "public", "grant_types": ["password"]}})
    )
    monkeypatch.setenv("TOKENLIFE_SERVICE_CLIENTS", json.dumps({"orders": secret}))
    registry = AuthSettings().client_registry
    assert registry.public_client(None) is None  # no default client unless one is configured
    assert registry.public_client("tokenlife-console") is None
    assert registry.public_client("web") is not None
    assert registry.public_client("orders") is None  # a service is no public client
    assert registry.authenticate("orders", secret)
    assert not registry.authenticate("orders", secret + "x")
    assert not registry.authenticate("web", "")


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"TOKENLIFE_SERVICE_CLIENTS": '{"orders": "dev-service-secret"}'}, "well-known dev service secret"),
        (
            {
                "TOKENLIFE_CLIENTS": json.dumps(
                    {"s": {"type": "confidential", "secret_hash": secret_hash("dev-service-secret")}}
                )
            },
            "well-known dev service secret",
        ),
        ({"TOKENLIFE_DEFAULT_CLIENT_ID": "nobody"}, "is not a registered public client"),
        (
            {"TOKENLIFE_CLIENTS": json.dumps({"w": {"type": "public", "scopes": ["billing"]}})},
            "scopes outside TOKENLIFE_SCOPES",
        ),
        (
            {
                "TOKENLIFE_CLIENTS": json.dumps({"o": {"type": "public"}}),
                "TOKENLIFE_SERVICE_CLIENTS": '{"o": "a-service-secret-long-enough"}',
            },
            "in both TOKENLIFE_CLIENTS and TOKENLIFE_SERVICE_CLIENTS",
        ),
    ],
)
def test_production_refuses_unsafe_client_registries(
    variables: dict[str, str], complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _production(monkeypatch)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UnsafeSettings, match=complaint):
        AuthSettings()


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "confidential", "secret_hash": "plain-text"},
        {"type": "confidential"},
        {"type": "public", "secret_hash": secret_hash("x")},
        {"type": "confidential", "secret_hash": secret_hash("x"), "grant_types": ["password"]},
        {"type": "public", "grant_types": ["client_credentials"]},
    ],
)
def test_malformed_clients_are_refused(spec: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    monkeypatch.setenv("TOKENLIFE_CLIENTS", json.dumps({"c": spec}))
    with pytest.raises(ValueError, match="clients"):
        AuthSettings()


def test_a_stream_kept_shorter_than_a_token_lives_is_refused_in_one_line_even_in_dev(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    monkeypatch.setenv("TOKENLIFE_TRANSPORT", "stream")
    monkeypatch.setenv("TOKENLIFE_STREAM_MAX_AGE", "300")
    with pytest.raises(UnsafeSettings) as auth:
        AuthSettings()
    assert str(auth.value).count("\n") == 0
    assert "TOKENLIFE_STREAM_MAX_AGE=300 s is shorter than" in str(auth.value)
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", DEV_AMQP_URL)
    with pytest.raises(UnsafeResourceSettings) as resource:
        ResourceSettings()
    assert str(resource.value).count("\n") == 0
    assert "300 s + leeway 5 s + margin 60 s = 365 s" in str(resource.value)
    monkeypatch.setenv("TOKENLIFE_STREAM_MAX_AGE", "3600")
    assert AuthSettings().stream is not None
    assert ResourceSettings().transport == "stream"


def test_the_stream_transport_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    monkeypatch.setenv("TOKENLIFE_TRANSPORT", "stream")
    with pytest.raises(UnsafeResourceSettings, match="needs TOKENLIFE_AMQP_URL"):
        ResourceSettings()
