"""The event log and everything that writes or reads it: the one place that knows its SQL.

Owns: the append lock and the appender (store), the group-commit writer (writer) with its batch transaction
(batch) and statements (batch_sql), the pure revocation decisions taken under the lock (intents), the
projections kept in the same transaction (projections) and their rebuild from the whole log (rebuild), the
LISTEN connection that wakes long-polls (listener), snapshots of the live revocations (snapshots), the reads
more than one caller needs (queries on SQLAlchemy, lookups on the hot path's asyncpg pool), and the lifetime
rules every retention follows (lifetimes).

May import: the standard library, SQLAlchemy, asyncpg, `auth_service.contract`, `auth_service.errors` and
`auth_service.db`. Nothing above it (tokens, accounts, the use cases, the API, the relay), and never the
settings: callers pass plain values (a lock timeout, a TTL).
"""
