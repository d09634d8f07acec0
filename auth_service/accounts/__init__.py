"""Who may sign in and who may call: users, passwords, the login throttle, and the client registry.

Owns: argon2id password hashing (passwords), adding a user with a checked email (users), the pure backoff
rule (backoff) and the throttle that counts failures in PostgreSQL (throttle), and the registry of OAuth
clients with their grants and secrets (clients).

May import: the standard library, argon2-cffi, email-validator, SQLAlchemy, `auth_service.errors` and
`auth_service.db`.
Nothing above it; the settings build a ClientRegistry from plain values, not the other way round.
"""
