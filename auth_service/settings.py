"""Settings of the auth service and the tools around it, read from TOKENLIFE_* environment variables.

Unsafe defaults are refused unless TOKENLIFE_ENV=dev: the error names each setting and says why.
"""

from __future__ import annotations

import logging
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("tokenlife")

DEV_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/tokenlife"
DEV_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEV_ISSUER = "http://127.0.0.1:8000"
DEV_CONSOLE_RESOURCE_URL = "http://127.0.0.1:8001"
# Dev-only well-known values, refused outside dev mode: never protect anything real with them.
DEV_KEY_ENCRYPTION_KEY = "ZGV2LW9ubHkta2V5LWVuY3J5cHRpb24ta2V5LTMyYis"
DEV_SERVICE_CLIENT = "dev-service"
DEV_SERVICE_SECRET = "dev-service-secret"


class UnsafeSettings(Exception):
    """A setting is unsafe outside dev mode; the message lists every offending setting.

    Not a ValueError on purpose: pydantic would wrap a ValueError into a generic validation error.
    """


class RelaySettings(BaseModel):
    """How the relay runs, passed whole; AuthSettings.relay builds it from the TOKENLIFE_* variables."""

    model_config = ConfigDict(frozen=True)

    heartbeat_interval: float = Field(default=0.5, gt=0, description="Seconds between heartbeats.")
    poll_interval: float = Field(default=1.0, gt=0, description="Backstop poll when no NOTIFY comes.")
    publish_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for a confirm.")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Events per confirmed batch.")
    leader_retry_interval: float = Field(
        default=0.25, gt=0, description="Seconds between standby lock attempts (and lease renewals)."
    )
    lease_timeout: float = Field(
        default=1.5, gt=0, description="A leader's lease older than this is ended by a standby (below B)."
    )
    max_backoff: float = Field(default=5.0, gt=0, description="Longest wait between reconnects.")

    @model_validator(mode="after")
    def _lease_outlives_renewals(self) -> Self:
        # A lease that can lapse between two renewals would have standbys end healthy leaders.
        if self.lease_timeout < 3 * self.leader_retry_interval:
            raise ValueError("lease_timeout must be at least 3 x leader_retry_interval (its renewal period)")
        return self


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

    # Tokens
    issuer: str = Field(default="", description="The iss claim and the discovery document's issuer (a URL).")
    audience: str = Field(default="tokenlife", min_length=1, description="The aud claim of access tokens.")
    default_client_id: str = Field(default="tokenlife", min_length=1, max_length=128)
    access_token_ttl: int = Field(default=300, ge=10, le=86400, description="Access token lifetime, seconds.")
    refresh_token_ttl: int = Field(default=30 * 86400, ge=60, description="Refresh token lifetime, seconds.")
    refresh_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        le=120,
        description="A rotated refresh token presented again within this is concurrent.",
    )
    key_encryption_key: SecretStr = Field(
        default=SecretStr(""), description="base64url of 32 random bytes; encrypts signing keys at rest."
    )
    key_refresh_seconds: float = Field(
        default=10.0, gt=0, description="How often instances reload signing keys."
    )

    # Services that may read the log, the snapshot and introspect: JSON {"client_id": "secret", ...}
    service_clients: dict[str, SecretStr] = Field(default_factory=dict)

    # Login abuse
    login_max_failures: int = Field(default=5, ge=1, description="Failures per account before backoff.")
    login_max_failures_per_address: int = Field(
        default=20, ge=1, description="Failures per client address before backoff (many users may share one)."
    )
    login_failure_window: float = Field(default=900.0, gt=0)
    login_max_backoff: float = Field(default=900.0, gt=0)

    # The web console: the resource service its "call" button talks to (also allowed in its CSP connect-src)
    console_resource_url: str = Field(
        default="", pattern=r"^(https?://[^/?#\s]+/?)?$", description="Base URL; dev: the local sample."
    )

    # Long-poll of the events API: each waiter holds no database connection, but wakes to read on a commit.
    long_poll_max_waiters: int = Field(
        default=500, ge=1, description="Long-polls one instance holds at once; past it, 503 + Retry-After."
    )

    # Relay
    relay_enabled: bool = Field(default=True, description="Run the relay inside `tokenlife auth serve`.")
    heartbeat_interval: float = Field(default=0.5, gt=0, description="Seconds between heartbeats.")
    relay_poll_interval: float = Field(default=1.0, gt=0, description="Backstop poll when no NOTIFY comes.")
    relay_publish_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for a confirm.")
    relay_batch_size: int = Field(default=500, ge=1, le=10_000, description="Events per confirmed batch.")
    relay_leader_retry_interval: float = Field(default=0.25, gt=0, description="Standby lock attempts.")
    relay_lease_timeout: float = Field(default=1.5, gt=0, description="A lapsed leader's lease is ended.")
    relay_max_backoff: float = Field(default=5.0, gt=0, description="Longest wait between reconnects.")

    @property
    def relay(self) -> RelaySettings:
        """The relay's settings, from the flat variables (TOKENLIFE_RELAY_*, TOKENLIFE_HEARTBEAT_INTERVAL)."""
        # heartbeat_interval is shared with resource services, so its variable has no RELAY_ prefix.
        flat = {name: f"relay_{name}" for name in RelaySettings.model_fields} | {
            "heartbeat_interval": "heartbeat_interval"
        }
        return RelaySettings.model_validate({name: getattr(self, field) for name, field in flat.items()})

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
            elif self.relay_enabled:
                # Without a broker, resource services long-poll the events API: then turn the relay off.
                problems.append(
                    "TOKENLIFE_AMQP_URL is not set: say which RabbitMQ the relay publishes to, or set "
                    "TOKENLIFE_RELAY_ENABLED=false to serve resource services by long-poll alone"
                )
        elif self.env != "dev" and _uses_guest_account(amqp):
            problems.append(
                "TOKENLIFE_AMQP_URL uses RabbitMQ's well-known guest/guest account: create a broker user "
                "for tokenlife"
            )
        if not self.issuer:
            if self.env == "dev":
                object.__setattr__(self, "issuer", DEV_ISSUER)
            else:
                problems.append("TOKENLIFE_ISSUER is not set: the URL that names this auth service in tokens")
        if not self.console_resource_url and self.env == "dev":
            object.__setattr__(self, "console_resource_url", DEV_CONSOLE_RESOURCE_URL)
        object.__setattr__(self, "console_resource_url", self.console_resource_url.rstrip("/"))
        if not self.key_encryption_key.get_secret_value():
            if self.env == "dev":
                object.__setattr__(self, "key_encryption_key", SecretStr(DEV_KEY_ENCRYPTION_KEY))
            else:
                problems.append(
                    "TOKENLIFE_KEY_ENCRYPTION_KEY is not set: signing keys would be stored unprotected "
                    "(generate one with `tokenlife keys kek`)"
                )
        if not self.service_clients:
            if self.env == "dev":
                object.__setattr__(
                    self, "service_clients", {DEV_SERVICE_CLIENT: SecretStr(DEV_SERVICE_SECRET)}
                )
        elif self.env != "dev" and any(
            len(secret.get_secret_value()) < 16 for secret in self.service_clients.values()
        ):
            problems.append("TOKENLIFE_SERVICE_CLIENTS has a secret shorter than 16 characters")
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
