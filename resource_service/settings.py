"""Settings of a resource service, read from TOKENLIFE_* environment variables.

Unsafe defaults (the broker's guest account, no service-client secret) are refused unless TOKENLIFE_ENV=dev.
"""

from __future__ import annotations

import logging
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amqpkit.streams import needed_window

__all__ = ["ResourceSettings", "UnsafeResourceSettings"]

log = logging.getLogger("tokenlife.resource")

DEV_AUTH_URL = "http://127.0.0.1:8000"
# The auth service's dev-mode service client; refused outside dev mode like the auth service refuses it.
DEV_SERVICE_CLIENT = "dev-service"
DEV_SERVICE_SECRET = "dev-service-secret"


class UnsafeResourceSettings(Exception):
    """A setting is unsafe or missing outside dev mode; the message names every offending setting.

    Not a ValueError on purpose: pydantic would wrap a ValueError into a generic validation error.
    """


class ResourceSettings(BaseSettings):
    """Everything a resource service instance needs: where the auth service and the broker are, and limits."""

    model_config = SettingsConfigDict(env_prefix="TOKENLIFE_", extra="ignore", frozen=True)

    env: Literal["dev", "prod"] = Field(default="prod", description="dev allows unsafe local defaults.")
    auth_url: str = Field(default="", description="Base URL of the auth service (snapshot, events, JWKS).")
    auth_urls: tuple[str, ...] = Field(
        default=(), description="Base URLs of several auth instances, failed over in turn (JSON list)."
    )
    amqp_url: SecretStr = Field(default=SecretStr(""), description="RabbitMQ URL the revocations come from.")
    exchange: str = Field(default="tokenlife.events", min_length=1, max_length=200)
    transport: Literal["queues", "stream"] = Field(
        default="queues",
        description="With a broker: a queue per instance, or the exchange's stream (large fan-outs).",
    )
    stream_port: int = Field(default=5552, ge=1, le=65535, description="RabbitMQ's stream protocol port.")
    stream_load_balancer: bool = Field(
        default=False,
        description="Reach every stream node through the URL's host and stream_port (a load balancer or a "
        "proxy in front of the cluster), not at the host and port each node advertises.",
    )
    access_token_ttl: int = Field(
        default=300, ge=10, le=86400, description="The longest access-token lifetime issued (replay reach)."
    )
    stream_max_age: int = Field(default=3600, ge=1, description="The stream's retention, seconds.")
    stream_margin: float = Field(
        default=60.0, ge=0, description="Replay reaches this much further back (clock skew between hosts)."
    )
    service_client_id: str = Field(
        default="", description="HTTP Basic id of this service at the auth service."
    )
    service_client_secret: SecretStr = Field(default=SecretStr(""))
    issuer: str = Field(default="", description="The iss tokens must carry; defaults to auth_url.")
    audience: str = Field(default="tokenlife", min_length=1)
    algorithms: tuple[str, ...] = Field(default=("ES256", "EdDSA", "RS256"), min_length=1)
    leeway: int = Field(default=5, ge=0, le=60, description="Clock skew allowed on exp, iat, nbf (seconds).")

    # Freshness
    poll_interval: float = Field(default=1.0, gt=0, description="Retry period of a failed read of the log.")
    long_poll_wait: float = Field(
        default=25.0, gt=0, le=30, description="Longest hold of a long-poll (kept under max_staleness / 2)."
    )
    heartbeat_interval: float = Field(default=0.5, gt=0, description="The relay's heartbeat period.")
    max_staleness: float = Field(
        default=2.0, gt=0, description="The bound B: unconfirmed for this long = stale (refused)."
    )
    stale_policy: Literal["fail_closed", "fail_open", "introspect"] = "fail_closed"

    # Limits and housekeeping
    buffer_limit: int = Field(default=10_000, ge=1, description="Messages held in memory during catch-up.")
    prefetch: int = Field(
        default=100, ge=1, le=65535, description="Unacknowledged messages the broker sends."
    )
    page_size: int = Field(default=1000, ge=1, le=1000, description="Events per page of the events API.")
    http_timeout: float = Field(default=5.0, gt=0)
    reconnect_max_backoff: float = Field(default=5.0, gt=0)
    prune_interval: float = Field(default=30.0, gt=0)
    jwks_min_interval: float = Field(default=10.0, ge=0, description="Least time between two JWKS fetches.")
    dead_letter_max: int = Field(default=10_000, ge=1, description="Dead letters kept for inspection.")
    cors_origins: tuple[str, ...] | None = Field(
        default=None,
        description="Browser origins allowed to call (GET, bearer); none, or in dev the auth URL's.",
    )

    @model_validator(mode="after")
    def _stream_reaches_back(self) -> Self:
        # In every mode: a replay from a stream kept shorter than a token lives would judge tokens on a state
        # that misses their revocations.
        if self.transport == "stream":
            if not self.amqp_url.get_secret_value():
                raise UnsafeResourceSettings("TOKENLIFE_TRANSPORT=stream needs TOKENLIFE_AMQP_URL")
            needed = needed_window(self.access_token_ttl, self.leeway, self.stream_margin)
            if self.stream_max_age < needed:
                raise UnsafeResourceSettings(
                    f"TOKENLIFE_STREAM_MAX_AGE={self.stream_max_age} s is shorter than a replay needs: "
                    f"access-token lifetime {self.access_token_ttl} s + leeway {self.leeway} s + margin "
                    f"{self.stream_margin:g} s = {needed:g} s"
                )
        return self

    @property
    def replay_window(self) -> float:
        """Seconds of the stream that rebuild the whole state (amqpkit.streams.needed_window)."""
        return needed_window(self.access_token_ttl, self.leeway, self.stream_margin)

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        dev = self.env == "dev"
        problems: list[str] = []
        if not self.auth_url and self.auth_urls:
            object.__setattr__(self, "auth_url", self.auth_urls[0])
        if not self.auth_url:
            if dev:
                object.__setattr__(self, "auth_url", DEV_AUTH_URL)
            else:
                problems.append("TOKENLIFE_AUTH_URL(S) is not set: the base URL of the auth service")
        object.__setattr__(self, "auth_url", self.auth_url.rstrip("/"))
        # auth_url alone is a list of one; set beside a list, it goes first (the issuer default follows it).
        urls = [self.auth_url, *(url.rstrip("/") for url in self.auth_urls)]
        object.__setattr__(self, "auth_urls", tuple(dict.fromkeys(url for url in urls if url)))
        if not self.issuer:
            object.__setattr__(self, "issuer", self.auth_url)
        if self.cors_origins is None:
            parts = urlsplit(self.auth_url)
            object.__setattr__(self, "cors_origins", (f"{parts.scheme}://{parts.netloc}",) if dev else ())
        elif bad := [o for o in self.cors_origins if not _is_origin(o)]:
            problems.append(f"TOKENLIFE_CORS_ORIGINS has entries that are not scheme://host[:port]: {bad}")
        amqp = self.amqp_url.get_secret_value()
        # No broker is a valid choice: the feed then long-polls the auth service's log alone.
        if amqp and not dev and urlsplit(amqp).username in (None, "", "guest"):
            problems.append(
                "TOKENLIFE_AMQP_URL uses RabbitMQ's well-known guest/guest account: create a broker user"
            )
        if not self.service_client_id:
            if dev:
                object.__setattr__(self, "service_client_id", DEV_SERVICE_CLIENT)
            else:
                problems.append(
                    "TOKENLIFE_SERVICE_CLIENT_ID is not set: this service's id at the auth service"
                )
        if not self.service_client_secret.get_secret_value():
            if dev:
                object.__setattr__(self, "service_client_secret", SecretStr(DEV_SERVICE_SECRET))
            else:
                problems.append(
                    "TOKENLIFE_SERVICE_CLIENT_SECRET is not set: the auth service would refuse us"
                )
        if problems:
            raise UnsafeResourceSettings(
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


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and value == f"{parts.scheme}://{parts.netloc}"
    )
