"""Tokens and the keys that sign them.

Owns: access tokens (RFC 9068 JWTs) and opaque refresh tokens (access), the signing keys an instance holds as
plain values (keyring), their storage, rotation, revocation and the JWKS (keys), the successor pair of a
rotated refresh token (successors), and the token endpoint's pure decisions (grant_rules).

May import: the standard library, PyJWT, cryptography, SQLAlchemy, `auth_service.contract`,
`auth_service.errors`, `auth_service.db` and `auth_service.log` (a key revocation is appended to the log).
Never the settings or the request context: callers pass the TTL, the issuer and the key material.
"""
