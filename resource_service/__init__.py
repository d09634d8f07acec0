"""The resource side: a library that checks every request locally against revocations pushed from the log,
and a runnable sample service built on it.

From the bottom up (each package's docstring says what it owns and may import; a test holds it):

    check/   the pure per-request check: verifier, keys, revocation state, freshness, guard
    feed/    keeps the state at the head of the log: catch-up, broker, long-poll, the auth service client
    web/     FastAPI and ASGI integration, the answer gate, metrics
    (top)    settings, errors (leaves); protection, the one entry point for a service of one's own
             (lifespan, `require` dependencies, the gate in one `install` call, readiness, metrics);
             the sample app, one user of it, and its command

It imports nothing of the auth service but `auth_service.contract`.
"""
