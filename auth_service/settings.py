"""Settings of the auth service and the tools around it, read from TOKENLIFE_* environment variables.

Unsafe defaults are refused unless TOKENLIFE_ENV=dev: the error names each setting and says why.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amqpkit.streams import needed_window
from auth_service.accounts.clients import (
    MAX_CLIENT_ID,
    PUBLIC_GRANT_TYPES,
    ClientRegistry,
    ClientSpec,
    registry_problems,
    secret_hash,
)
from auth_service.broker import RelaySettings, StreamSpec
from auth_service.db.urls import hosts_in_query
from auth_service.tokens.keyring import DEFAULT_ALGORITHM, Algorithm

log = logging.getLogger("tokenlife")

DEV_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/tokenlife"
DEV_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEV_ISSUER = "http://127.0.0.1:8000"
DEV_CONSOLE_RESOURCE_URL = "http://127.0.0.1:8001"
# Dev-only well-known values, refused outside dev mode: never protect anything real with them.
DEV_KEY_ENCRYPTION_KEY = "ZGV2LW9ubHkta2V5LWVuY3J5cHRpb24ta2V5LTMyYis"
DEV_SERVICE_CLIENT = "dev-service"
DEV_SERVICE_SECRET = "dev-service-secret"
DEV_PUBLIC_CLIENT = "tokenlife-console"  # the web console's id; dev registers it as the default public client


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
    # The stream transport: the relay declares a stream bound to the exchange (amqpkit.streams).
    transport: Literal["queues", "stream"] = Field(
        default="queues", description="stream: the relay also declares the exchange's stream."
    )
    stream_max_age: int = Field(default=3600, ge=1, description="The stream's retention by age, seconds.")
    stream_max_bytes: int = Field(
        default=2_000_000_000, ge=1_000_000, description="The stream's size cap, bytes (the oldest go first)."
    )
    stream_margin: float = Field(
        default=120.0, ge=0, description="Retention beyond the token lifetime (resource leeway, clock skew)."
    )
    lock_timeout_ms: int = Field(default=5000, ge=1, description="How long an append waits for the log lock.")

    # Tokens
    issuer: str = Field(default="", description="The iss claim and the discovery document's issuer (a URL).")
    audience: str = Field(default="tokenlife", min_length=1, description="The aud claim of access tokens.")
    scopes: str = Field(
        default="read write admin",  # the sample resource service's scopes
        description="Space-separated scopes this server issues (scopes_supported).",
    )
    default_client_id: str = Field(
        default="",
        max_length=MAX_CLIENT_ID,
        description="The public client a token request without client_id stands for; none if empty.",
    )
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
    signing_algorithm: Algorithm = Field(
        default=DEFAULT_ALGORITHM,
        description="What new signing keys sign with (ES256, EdDSA, RS256); applies from the next rotation.",
    )

    # The client registry: JSON {"client_id": {"type": "public" | "confidential", "secret_hash": "sha256:...",
    # "grant_types": [...], "scopes": [...]}}.
    clients: dict[str, ClientSpec] = Field(default_factory=dict)
    # Resource services, confidential clients of the same registry, in short: JSON {"client_id": "secret"}.
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

    # Shared Signals transmitter (ssf/)
    ssf_enabled: bool = Field(default=True, description="Run the SSF push deliverer in `auth serve`.")
    ssf_retention: float = Field(
        default=7 * 86400.0, gt=0, description="Seconds of the log a stream that fell behind is still sent."
    )
    ssf_push_timeout: float = Field(default=5.0, gt=0, description="Seconds one push may take.")
    ssf_push_max_backoff: float = Field(default=30.0, gt=0, description="Longest wait between retries.")
    ssf_poll_max_wait: float = Field(default=25.0, gt=0, le=120, description="Longest hold of a long-poll.")
    ssf_min_verification_interval: int = Field(default=10, ge=0, description="Seconds between verifications.")
    ssf_status_deadline: float = Field(
        default=30.0,
        ge=0,
        description="Seconds `tokenlife ssf status` waits for a receiver to take the SET that pauses or"
        " disables its stream before the stream takes that status all the same.",
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

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        """The usual PostgreSQL spellings (postgres://, postgresql://) name the same server, via asyncpg."""
        scheme, separator, rest = value.partition("://")
        if not value or scheme.lower() == "postgresql+asyncpg":
            return hosts_in_query(value)
        if separator and scheme.lower() in ("postgres", "postgresql"):
            return hosts_in_query(f"postgresql+asyncpg://{rest}")
        # Not the value in the message: it may hold a password.
        raise ValueError(
            "not a PostgreSQL URL: write postgresql://user:password@host:5432/database "
            "(postgres:// and postgresql+asyncpg:// are taken too)"
        )

    @property
    def relay(self) -> RelaySettings:
        """The relay's settings, from the flat variables (TOKENLIFE_RELAY_*, TOKENLIFE_HEARTBEAT_INTERVAL)."""
        # heartbeat_interval is shared with resource services, so its variable has no RELAY_ prefix.
        flat = {name: f"relay_{name}" for name in RelaySettings.model_fields} | {
            "heartbeat_interval": "heartbeat_interval"
        }
        return RelaySettings.model_validate({name: getattr(self, field) for name, field in flat.items()})

    @property
    def stream(self) -> StreamSpec | None:
        """The stream the relay declares, or None with the per-instance queues."""
        if self.transport != "stream":
            return None
        return StreamSpec(max_age=self.stream_max_age, max_bytes=self.stream_max_bytes)

    @model_validator(mode="after")
    def _stream_outlives_tokens(self) -> Self:
        # In every mode: a stream kept shorter than a token lives cannot rebuild a resource instance's state.
        needed = needed_window(self.access_token_ttl, 0, self.stream_margin)
        if self.transport == "stream" and self.stream_max_age < needed:
            raise UnsafeSettings(
                f"TOKENLIFE_STREAM_MAX_AGE={self.stream_max_age} s is shorter than the access-token lifetime "
                f"{self.access_token_ttl} s + margin {self.stream_margin:g} s = {needed:g} s"
            )
        return self

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
        problems += self._check_clients()
        if problems:
            why = (
                "refusing to start with an inconsistent client registry"
                if self.env == "dev"
                else "refusing to start outside dev mode (TOKENLIFE_ENV=dev allows these for local trials)"
            )
            raise UnsafeSettings(why + ":\n  - " + "\n  - ".join(problems))
        return self

    def _check_clients(self) -> list[str]:
        """Dev registers the console and a service; outside dev every client is explicit and safe."""
        dev = self.env == "dev"
        if (
            dev
            and not self.service_clients
            # A Shared Signals receiver (client_credentials) is no service: dev still registers its own.
            and not any(c.type == "confidential" and not c.grant_types for c in self.clients.values())
        ):
            object.__setattr__(self, "service_clients", {DEV_SERVICE_CLIENT: SecretStr(DEV_SERVICE_SECRET)})
        if dev and DEV_PUBLIC_CLIENT not in self.clients:
            console = ClientSpec(type="public", grant_types=PUBLIC_GRANT_TYPES)
            object.__setattr__(self, "clients", {**self.clients, DEV_PUBLIC_CLIENT: console})
        if dev and not self.default_client_id:
            object.__setattr__(self, "default_client_id", DEV_PUBLIC_CLIENT)
        secrets = {name: s.get_secret_value() for name, s in self.service_clients.items()}
        problems = registry_problems(
            self.clients, secrets, set(self.scopes.split()), dev=dev, dev_secret=DEV_SERVICE_SECRET
        )
        if self.default_client_id and self.client_registry.public_client(None) is None:
            problems.append(
                f"TOKENLIFE_DEFAULT_CLIENT_ID {self.default_client_id!r} is not a registered public client"
            )
        return problems

    @cached_property
    def client_registry(self) -> ClientRegistry:
        """Every registered client: TOKENLIFE_CLIENTS plus the TOKENLIFE_SERVICE_CLIENTS shorthand."""
        services = {
            name: ClientSpec(type="confidential", secret_hash=secret_hash(secret.get_secret_value()))
            for name, secret in self.service_clients.items()
        }
        return ClientRegistry({**services, **self.clients}, self.default_client_id)

    @property
    def scopes_supported(self) -> tuple[str, ...]:
        """The scopes this server issues, in configured order, without repeats."""
        return tuple(dict.fromkeys(self.scopes.split()))

    def announce(self) -> None:
        """Say loudly, at start, when running in dev mode."""
        if self.env == "dev":
            log.warning(
                "DEV MODE (TOKENLIFE_ENV=dev): unsafe defaults are allowed; never run this in production"
            )


def _uses_guest_account(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username in (None, "", "guest")
