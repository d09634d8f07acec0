"""A private PostgreSQL primary and streaming standby on loopback, for the database failover scenario.

The machine's PostgreSQL binaries (initdb, pg_basebackup, pg_ctl; TOKENLIFE_PG_BIN to choose), two data
directories and two ports of the test's own; never the machine's shared server. PostgreSQL refuses to run
as root, so as root every command runs as the `postgres` system user (runuser), in directories it owns.

`synchronous=True` names the standby in `synchronous_standby_names` with `synchronous_commit = on`: a COMMIT
returns only once the standby has flushed its WAL, so whatever a client saw committed survives the primary's
loss. fsync is off on both (a throwaway cluster): the fault here is a process killed, not a machine powered
off, and a killed server's writes are already in the kernel's page cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port


def _bin() -> Path:
    # The machine's own server's binaries (Debian's layout), the newest major version when several are there.
    if found := os.environ.get("TOKENLIFE_PG_BIN"):
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name or 0))
    return versions[-1] if versions else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()
STANDBY_NAME = "tokenlife_standby"


def available() -> str | None:
    """Why the pair cannot run here, or None when it can."""
    missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup", "postgres") if not (BIN / b).exists()]
    if missing:
        return f"PostgreSQL binaries not found in {BIN} ({', '.join(missing)}): set TOKENLIFE_PG_BIN"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


@dataclass
class Node:
    """One server of the pair: its data directory and port."""

    name: str
    data: Path
    port: int
    log: Path


@dataclass
class Pair:
    """A primary and its streaming standby; `fail_over()` kills the primary and promotes the standby."""

    workdir: Path
    synchronous: bool = True
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            Node(name, self.workdir / name, free_port(), self.workdir / f"{name}.log") for name in ("a", "b")
        ]
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")

    @property
    def primary(self) -> Node:
        return self.nodes[0]

    @property
    def standby(self) -> Node:
        return self.nodes[1]

    def url(self, database: str = "postgres") -> str:
        """The two-host URL the services use: whichever of the two is writable now."""
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in self.nodes)
        return f"postgresql+asyncpg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def node_url(self, node: Node, database: str = "postgres") -> str:
        """One server alone (for reading a standby or a promoted primary directly)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{node.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.workdir, timeout=120)

    def _ctl(self, node: Node, *args: str) -> None:
        self._run("pg_ctl", "-D", str(node.data), "-l", str(node.log), "-w", "-t", "60", *args)

    def start(self) -> None:
        """initdb the primary, start it, clone the standby from it, start that; synchronous when asked."""
        p, s = self.primary, self.standby
        self._run("initdb", "-D", str(p.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        conf = [
            f"port = {p.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.workdir}'",
            "wal_level = replica",
            "max_wal_senders = 5",
            "hot_standby = on",
            "fsync = off",
            "max_connections = 200",
            "wal_keep_size = '256MB'",
        ]
        with (p.data / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        self._ctl(p, "start")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "-D", str(s.data))
        self._follow(s, p)
        self._ctl(s, "start")
        if self.synchronous:
            self._psql(p, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            self._psql(p, "ALTER SYSTEM SET synchronous_commit = 'on'")
            self._psql(p, "SELECT pg_reload_conf()")

    def _follow(self, node: Node, upstream: Node) -> None:
        # The standby's own port, and where it streams from under the name the primary waits for.
        (node.data / "standby.signal").touch()
        with (node.data / "postgresql.auto.conf").open("a") as f:
            f.write(
                f"port = {node.port}\n"
                f"primary_conninfo = 'host=127.0.0.1 port={upstream.port} user=postgres "
                f"application_name={STANDBY_NAME}'\n"
            )
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(node.data)], check=True)

    def _psql(self, node: Node, sql: str) -> None:
        self._run("psql", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "-Atqc", sql)

    def kill_primary(self) -> None:
        """Stop the primary hard: immediate mode, no checkpoint, every session cut."""
        self._ctl(self.primary, "stop", "-m", "immediate")

    def promote(self) -> None:
        """Promote the standby (pg_ctl waits until it accepts writes); it is the primary from now on."""
        self._ctl(self.standby, "promote")
        self.nodes.reverse()

    def rebuild_standby(self) -> None:
        """Make the lost primary a standby of the promoted one: a fresh base backup, then streaming."""
        lost, primary = self.standby, self.primary
        shutil.rmtree(lost.data)
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(lost.data),
        )
        self._follow(lost, primary)
        self._ctl(lost, "start")
        if self.synchronous:
            # The promoted server was cloned before the first primary named a synchronous standby.
            self._psql(primary, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            self._psql(primary, "SELECT pg_reload_conf()")

    def stop(self) -> None:
        """Stop both servers, whatever state they are in."""
        for node in self.nodes:
            if (node.data / "postmaster.pid").exists():
                try:
                    self._ctl(node, "stop", "-m", "immediate")
                except subprocess.CalledProcessError:
                    pass
