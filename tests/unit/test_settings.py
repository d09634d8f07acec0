"""Settings refuse unsafe defaults outside dev mode, and say which setting and why."""

from __future__ import annotations

import os

import pytest

from auth_service.keys import new_key_encryption_key
from auth_service.settings import DEV_AMQP_URL, AuthSettings, UnsafeSettings
from resource_service.settings import ResourceSettings


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
