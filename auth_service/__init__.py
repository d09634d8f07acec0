"""The auth service: login, refresh, logout and revoke, every change an event in one append-only log.

From the bottom up (each package's docstring says what it owns and what it may import; a test holds it):

    db/        the engine, the tables, outages translated, the migrations
    log/       the event log: append lock, group-commit writer, intents, projections, reads, snapshots
    tokens/    access and refresh tokens, signing keys and the JWKS, rotation decisions
    accounts/  passwords, the login throttle, the client registry
    (top)      settings, context, maintenance, commands, app, metrics, broker (the relay's settings),
               and traces (a revocation's spans, imported only when tracing is on)
    use_cases/ grants, client_grant, revoke, introspection, authn: what a request asks of the service
    api/       the HTTP routes          relay/    the log to RabbitMQ          console/  the web console

`contract/` (the event contract, standard library and pydantic only) and `errors.py` (the error tree) are
leaves that every layer may import. Lower packages take plain values (a lock timeout, a TTL), never the
settings or the request context, so no import runs back up.
"""
