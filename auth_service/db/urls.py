"""Database URLs as the settings take them: standard library only, so the settings (which every command reads)
load without the database drivers."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def hosts_in_query(database_url: str) -> str:
    """libpq's list of servers in the authority (`user@a:5432,b:5432/db`) as SQLAlchemy reads one:
    `user@/db?host=a:5432&host=b:5432`; any other URL is returned as it is."""
    parts = urlsplit(database_url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return database_url
    query = "&".join([*(f"host={h}" for h in hosts.split(",") if h), *([parts.query] if parts.query else [])])
    return urlunsplit(parts._replace(netloc=f"{credentials}{at}", query=query))
