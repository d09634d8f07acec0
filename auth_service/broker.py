"""What the auth service runs on the broker, as plain settings: how the relay publishes (RelaySettings) and
the stream it declares beside the exchange (StreamSpec). A leaf: AuthSettings nests them, the relay takes
them."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamSpec(BaseModel):
    """The stream the relay declares beside the exchange: its retention by age (seconds) and its size cap."""

    model_config = ConfigDict(frozen=True)

    max_age: int = Field(ge=1)
    max_bytes: int = Field(ge=1)


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
