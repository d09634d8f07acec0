"""The database as a resource: the engine, the tables, the translation of outages, and the migrations.

Owns: the async engine and the plain asyncpg DSN (engine), the SQLAlchemy Core tables the migrations create
(tables), database outages as one DatabaseUnavailable (errors), and applying the Alembic migrations (migrate).

May import: the standard library, SQLAlchemy, asyncpg, Alembic and `auth_service.errors`. It is the bottom of
the auth service: every other package may import it, it imports none of them.
"""
