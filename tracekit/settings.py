"""Whether tracing is on, from the standard OTEL_* environment variables (no OpenTelemetry import here).

The SDK reads the rest of them itself (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, the
OTLP exporter's endpoint, headers and timeout); this class reads only what decides on or off, and refuses an
exporter it does not know in one line rather than at the first span.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TraceSettings", "TracingUnavailable"]

EXPORTERS = ("otlp", "console", "none")


class TracingUnavailable(Exception):
    """Tracing is asked for but cannot run (the extra is missing, an unknown exporter): the text says."""


class TraceSettings(BaseSettings):
    """The OTEL_* variables that turn tracing on; off unless an exporter or an OTLP endpoint is named."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    sdk_disabled: bool = Field(default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    traces_exporter: str = Field(default="", validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"))
    otlp_endpoint: str = Field(default="", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"))
    otlp_traces_endpoint: str = Field(
        default="", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )

    @property
    def exporter(self) -> Literal["otlp", "console"] | None:
        """The span exporter to run, or None: tracing is off."""
        if self.sdk_disabled:
            return None
        # The SDK's OTEL_TRACES_EXPORTER is a list; one exporter is all a service needs.
        named = self.traces_exporter.split(",")[0].strip().lower()
        if named and named not in EXPORTERS:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={self.traces_exporter!r}: tokenlife knows {', '.join(EXPORTERS)}"
            )
        if named == "none":
            return None
        if named:
            return "console" if named == "console" else "otlp"
        return "otlp" if (self.otlp_endpoint or self.otlp_traces_endpoint) else None

    @property
    def why_on(self) -> str:
        """Which variable turned tracing on, for messages."""
        if self.traces_exporter:
            return f"OTEL_TRACES_EXPORTER={self.traces_exporter}"
        return "an OTEL_EXPORTER_OTLP_*ENDPOINT is set"
