"""What request handlers share: settings, the engine, the hot path's asyncpg pool and its batched revocation
check, the log writer, the signing keys, the login throttle, and the revocations' spans (tracing on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.accounts.throttle import LoginThrottle
from auth_service.log.lookups import RevocationReads
from auth_service.log.writer import LogWriter
from auth_service.settings import AuthSettings
from auth_service.tokens.keys import KeyCache

if TYPE_CHECKING:
    from auth_service.traces import RevocationTraces


@dataclass
class AuthContext:
    settings: AuthSettings
    engine: AsyncEngine
    keys: KeyCache
    throttle: LoginThrottle
    pg: Any  # an asyncpg.Pool: the hot path's reads (lookups.py)
    writer: LogWriter  # the group committer of revocations
    revocation_reads: RevocationReads = field(init=False)  # the revocation check, batched, on `pg`
    traces: RevocationTraces | None = None  # the revocations' spans, when tracing is on (traces.py)

    def __post_init__(self) -> None:
        self.revocation_reads = RevocationReads(self.pg)
