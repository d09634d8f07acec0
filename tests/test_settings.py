"""Settings refuse unsafe defaults outside dev mode, and say which setting and why."""

from __future__ import annotations

import pytest

from auth_service.settings import DEV_AMQP_URL, AuthSettings, UnsafeSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TOKENLIFE_ENV", "TOKENLIFE_DATABASE_URL", "TOKENLIFE_AMQP_URL", "TOKENLIFE_EXCHANGE"):
        monkeypatch.delenv(name, raising=False)


def test_production_refuses_missing_database_and_broker_urls() -> None:
    with pytest.raises(UnsafeSettings) as info:
        AuthSettings()
    assert "TOKENLIFE_DATABASE_URL is not set" in str(info.value)
    assert "TOKENLIFE_AMQP_URL is not set" in str(info.value)


@pytest.mark.parametrize("url", ["amqp://guest:guest@broker:5672/", "amqp://broker:5672/"])
def test_production_refuses_the_guest_broker_account(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", url)
    with pytest.raises(UnsafeSettings, match="TOKENLIFE_AMQP_URL uses RabbitMQ's well-known guest"):
        AuthSettings()


def test_production_accepts_explicit_safe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLIFE_DATABASE_URL", "postgresql+asyncpg://app@db/tokenlife")
    monkeypatch.setenv("TOKENLIFE_AMQP_URL", "amqps://tokenlife:s3cret@broker:5671/")
    settings = AuthSettings()
    assert settings.env == "prod"
    assert "s3cret" not in repr(settings)


def test_dev_mode_fills_local_defaults_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = AuthSettings(env="dev")
    assert settings.amqp_url.get_secret_value() == DEV_AMQP_URL
    assert settings.database_url.startswith("postgresql+asyncpg://")
    settings.announce()
    assert "DEV MODE" in caplog.text
