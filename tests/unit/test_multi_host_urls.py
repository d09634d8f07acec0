"""A primary + standby URL keeps every server of its list on every kind of connection (engine.py)."""

from __future__ import annotations

from asyncpg.connect_utils import _parse_connect_dsn_and_args
from sqlalchemy.dialects.postgresql.asyncpg import dialect
from sqlalchemy.engine import make_url

from auth_service.db.engine import asyncpg_dsn
from auth_service.db.urls import hosts_in_query
from auth_service.settings import AuthSettings

TWO_HOSTS = "postgresql+asyncpg://u:pw@/db?host=a:5432&host=b:5433&target_session_attrs=read-write"


def _asyncpg_hosts(dsn: str) -> list[tuple[str, int]]:
    addrs, params = _parse_connect_dsn_and_args(
        dsn=dsn,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile=None,
        database=None,
        ssl=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
        service=None,
        servicefile=None,
    )
    assert params.target_session_attrs.value == "read-write"
    return [(str(h), int(p)) for h, p in addrs]


def test_asyncpg_dsn_keeps_every_host_of_the_list() -> None:
    assert _asyncpg_hosts(asyncpg_dsn(TWO_HOSTS)) == [("a", 5432), ("b", 5433)]


def test_engine_gets_every_host_of_the_list() -> None:
    _, kwargs = dialect().create_connect_args(make_url(TWO_HOSTS))  # type: ignore[no-untyped-call]
    assert (kwargs["host"], kwargs["port"]) == (["a", "b"], [5432, 5433])


def test_libpq_host_list_in_the_authority_is_taken() -> None:
    url = AuthSettings(
        env="dev", database_url="postgresql://u:pw@a:5432,b:5433/db?target_session_attrs=read-write"
    )
    assert url.database_url == TWO_HOSTS
    assert _asyncpg_hosts(asyncpg_dsn(url.database_url)) == [("a", 5432), ("b", 5433)]


def test_single_host_url_is_left_as_it_is() -> None:
    one = "postgresql+asyncpg://u:pw@a:5432/db"
    assert hosts_in_query(one) == one
    assert asyncpg_dsn(one) == "postgresql://u:pw@a:5432/db"
