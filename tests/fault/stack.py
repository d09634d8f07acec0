"""The fault suite's stack: 2 auth and 3 resource processes, every link to the broker and auth via a TcpProxy.

PostgreSQL is a private embedded server of the suite (it is stopped and started by a scenario, never the
machine's shared one); RabbitMQ is the test broker, reached only through proxies, on an exchange of the
suite's own. Client traffic (logins, logouts, probes) goes straight to the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.conftest import SERVICE_CLIENT, auth_env, free_port
from tests.tcp_proxy import TcpProxy
from tokenlife import embedded_db

ISSUER = "http://tokenlife.fault"
BOUND = 2.0  # the default TOKENLIFE_MAX_STALENESS, which the resource processes keep


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{proxy.host}:{proxy.port}" if credentials else f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(eq=False)
class Process:
    """One service process on a fixed loopback port: start, kill -9, SIGSTOP/SIGCONT, restart."""

    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (it binds the same port every time)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tokenlife",
                    *self.args,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        self.incarnation += 1

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def remote_ports(self) -> set[int]:
        """The loopback ports this process's established TCP connections go to (its sockets' inodes in
        /proc/<pid>/fd, looked up in /proc/net/tcp)."""
        assert self.proc is not None
        fds = Path(f"/proc/{self.proc.pid}/fd")
        inodes = set()
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                ports.add(int(fields[2].split(":")[1], 16))
        return ports

    async def ready(self, within: float = 60.0) -> None:
        """Wait until /readyz answers 200."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                try:
                    if (await http.get(f"{self.base}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {self.log}")
                if loop.time() > end:
                    raise RuntimeError(f"{self.name} not ready within {within} s; see {self.log}")
                await asyncio.sleep(0.1)


@dataclass(eq=False)
class Stack:
    """Every process and proxy of the suite."""

    workdir: Path
    amqp_url: str
    exchange: str
    # queues, or stream: the relays also declare the exchange's stream and the resource instances read it over
    # the stream protocol, each through its own proxy to stream_port in rstream's load-balancer mode (the
    # host the broker advertises would bypass the proxy).
    transport: str = "queues"
    stream_port: int = 5552
    postgres: embedded_db.EmbeddedPostgres | None = None
    database_url: str = ""
    auth: list[Process] = field(default_factory=list)
    resource: list[Process] = field(default_factory=list)
    broker_proxies: list[TcpProxy] = field(default_factory=list)  # one per process
    auth_proxies: dict[str, list[TcpProxy]] = field(default_factory=dict)  # per resource: one per auth
    extra: list[Process] = field(default_factory=list)  # resource processes a scenario added (not probed)

    def start_postgres(self) -> None:
        """Start (or restart) the private embedded PostgreSQL."""
        self.postgres = embedded_db.start(self.workdir / "pg", durable=False)
        self.database_url = self.postgres.url()

    def stop_postgres(self) -> None:
        """Stop it (a fast shutdown: every session ends)."""
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    async def start(self, auth_count: int = 2, resource_count: int = 3) -> None:
        """Proxies first, then the auth processes, then the resource processes; all ready."""
        target = urlsplit(self.amqp_url)
        host = target.hostname or "127.0.0.1"
        for i in range(auth_count + resource_count):
            # A resource instance on the stream reaches the broker by the stream protocol alone.
            port = self.stream_port if self.transport == "stream" and i >= auth_count else target.port or 5672
            proxy = TcpProxy(host, port)
            await proxy.start()
            self.broker_proxies.append(proxy)
        for i in range(auth_count):
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
            env |= auth_env(
                self.database_url,
                _through(self.broker_proxies[i], self.amqp_url),
                TOKENLIFE_ISSUER=ISSUER,
                TOKENLIFE_EXCHANGE=self.exchange,
                TOKENLIFE_HEARTBEAT_INTERVAL="0.5",
                TOKENLIFE_TRANSPORT=self.transport,
            )
            self.auth.append(
                Process(f"auth{i}", ["auth", "serve"], env, free_port(), self.workdir / f"auth{i}.log")
            )
        for process in self.auth:
            process.start()
        for process in self.auth:
            await process.ready()
        for j in range(resource_count):
            broker = _through(self.broker_proxies[auth_count + j], self.amqp_url)
            extra = {"TOKENLIFE_TRANSPORT": self.transport}
            if self.transport == "stream":
                extra |= {
                    "TOKENLIFE_STREAM_PORT": str(self.broker_proxies[auth_count + j].port),
                    "TOKENLIFE_STREAM_LOAD_BALANCER": "true",
                }
            self.resource.append(await self._resource(f"resource{j}", broker, **extra))
        for process in self.resource:
            process.start()
        for process in self.resource:
            await process.ready()

    async def _resource(self, name: str, amqp_url: str, **extra: str) -> Process:
        proxies = []
        for process in self.auth:
            proxy = TcpProxy("127.0.0.1", process.port)
            await proxy.start()
            proxies.append(proxy)
        self.auth_proxies[name] = proxies
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_AUTH_URLS": json.dumps([f"http://{p.host}:{p.port}" for p in proxies]),
            "TOKENLIFE_ISSUER": ISSUER,
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_EXCHANGE": self.exchange,
            "TOKENLIFE_SERVICE_CLIENT_ID": SERVICE_CLIENT[0],
            "TOKENLIFE_SERVICE_CLIENT_SECRET": SERVICE_CLIENT[1],
            "TOKENLIFE_POLL_INTERVAL": "0.2",
            "TOKENLIFE_HTTP_TIMEOUT": "1",
            "TOKENLIFE_JWKS_MIN_INTERVAL": "0",
        }
        return Process(name, ["resource", "serve"], env | extra, free_port(), self.workdir / f"{name}.log")

    async def extra_resource(self, name: str, **extra: str) -> Process:
        """A further resource process (not started) with no broker: the auth URLs alone keep it fresh.

        It has its own proxy to each auth process (auth_proxies[name]), `extra` overrides its environment,
        and stop() ends it; the load's probes do not reach it.
        """
        process = await self._resource(name, "", **extra)
        self.extra.append(process)
        return process

    async def leader(self) -> Process | None:
        """The auth process whose relay holds the leader lock now (from its /metrics)."""
        async with httpx.AsyncClient(timeout=1.0) as http:
            for process in self.auth:
                try:
                    text = (await http.get(f"{process.base}/metrics")).text
                except httpx.HTTPError:
                    continue
                if "\ntokenlife_relay_leader 1.0" in text:
                    return process
        return None

    async def stop(self) -> None:
        """Kill every process, close every proxy, stop PostgreSQL."""
        for process in [*self.extra, *self.resource, *self.auth]:
            process.kill()
        for proxy in [*self.broker_proxies, *(p for ps in self.auth_proxies.values() for p in ps)]:
            await proxy.close()
        self.stop_postgres()
