"""Settings of the auth service and the tools around it, read from TOKENLIFE_* environment variables.

Unsafe defaults are refused unless TOKENLIFE_ENV=dev: the error names each setting and says why.
"""

from __future__ import annotations

import logging
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("tokenlife")

DEV_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/tokenlife"
DEV_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class UnsafeSettings(Exception):
    """A setting is unsafe outside dev mode; the message lists every offending setting.

    Not a ValueError on purpose: pydantic would wrap a ValueError into a generic validation error.
    """


class AuthSettings(BaseSettings):
    """Everything the auth service, the relay and the operator commands need."""

    model_config = SettingsConfigDict(env_prefix="TOKENLIFE_", extra="ignore", frozen=True)

    env: Literal["dev", "prod"] = Field(default="prod", description="dev allows unsafe local defaults.")
    database_url: str = Field(
        default="", description="SQLAlchemy URL, postgresql+asyncpg://... in production."
    )
    amqp_url: SecretStr = Field(default=SecretStr(""), description="RabbitMQ URL for the relay.")
    exchange: str = Field(default="tokenlife.events", min_length=1, max_length=255)
    lock_timeout_ms: int = Field(default=5000, ge=1, description="How long an append waits for the log lock.")

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        problems: list[str] = []
        if not self.database_url:
            if self.env == "dev":
                object.__setattr__(self, "database_url", DEV_DATABASE_URL)
            else:
                problems.append("TOKENLIFE_DATABASE_URL is not set: say which PostgreSQL holds the event log")
        amqp = self.amqp_url.get_secret_value()
        if not amqp:
            if self.env == "dev":
                object.__setattr__(self, "amqp_url", SecretStr(DEV_AMQP_URL))
            else:
                problems.append("TOKENLIFE_AMQP_URL is not set: say which RabbitMQ the relay publishes to")
        elif self.env != "dev" and _uses_guest_account(amqp):
            problems.append(
                "TOKENLIFE_AMQP_URL uses RabbitMQ's well-known guest/guest account: create a broker user "
                "for tokenlife"
            )
        if problems:
            raise UnsafeSettings(
                "refusing to start outside dev mode (TOKENLIFE_ENV=dev allows these for local trials):\n  - "
                + "\n  - ".join(problems)
            )
        return self

    def announce(self) -> None:
        """Say loudly, at start, when running in dev mode."""
        if self.env == "dev":
            log.warning(
                "DEV MODE (TOKENLIFE_ENV=dev): unsafe defaults are allowed; never run this in production"
            )


def _uses_guest_account(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username in (None, "", "guest")
