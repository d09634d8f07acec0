"""The per-request check, pure: a token verified and held against the revocation state, with no I/O.

Owns: token verification (verifier) with the public keys it trusts (keys: a fixed set or a JWKS fetched on
demand, the one module here that does I/O, behind the KeySource protocol), the revocation state (state) in its
compact tables (entries), how sure the instance is that the state is at the head of the log (freshness),
the guard that puts them together for a request (guard), and the index of open connections (WebSockets,
event streams) that the state tells of each revocation it folds in (watch).

May import: the standard library, PyJWT, cryptography, httpx (keys only), `auth_service.contract` and
`resource_service.errors`. Never the feed or the web layer: they feed it and call it.
"""
