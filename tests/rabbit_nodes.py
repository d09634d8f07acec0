"""Private RabbitMQ nodes on this machine, for the runs that must not share the machine's broker: the scale
benchmark (whose broker CPU must be its own) and the three-node cluster test (which kills a node).

Each node gets its own name (`<prefix>-<i>@localhost`), ports, data, log and pid file under a work directory,
and its own Erlang cookie (HOME is the work directory, so rabbitmqctl reads the same one). Nothing of the
machine's broker is read or changed: the machine's env file and config are replaced by empty ones of ours
(`RABBITMQ_CONF_ENV_FILE`, `RABBITMQ_CONFIG_FILE`). The scripts are run from /usr/lib/rabbitmq/bin, not
through /usr/sbin's wrapper, which would switch to the `rabbitmq` user and its cookie.

    nodes = start_cluster(workdir, "tl-bench", 1)   # or 3: nodes 2 and 3 join node 1
    nodes[0].amqp_url, nodes[0].stream_port, nodes[0].pid (the beam.smp process), nodes[0].cpu_seconds()
    stop_all(nodes)                                  # and shutil.rmtree(workdir)
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RabbitNode", "available", "start_cluster", "stop_all"]

_SCRIPTS = Path(os.environ.get("TOKENLIFE_RABBITMQ_SCRIPTS", "/usr/lib/rabbitmq/bin"))
# The machine's broker and its CLI tools use 5672, 25672 and 35672-35682: stay clear of them and of the
# kernel's ephemeral ports (32768+), where a client socket could hold a port between the check and the bind.
_PORTS = range(20000, 32000)
_TAKEN = {25672, 5552, 5672}
_TICKS = os.sysconf("SC_CLK_TCK")


def available() -> str | None:
    """None when private nodes can be started here, else why not."""
    if not (_SCRIPTS / "rabbitmq-server").exists():
        return f"no rabbitmq-server in {_SCRIPTS} (set TOKENLIFE_RABBITMQ_SCRIPTS)"
    return None


def _free_port(taken: set[int]) -> int:
    while True:
        port = random.choice(_PORTS)
        if port in taken or port in _TAKEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


@dataclass(eq=False)
class RabbitNode:
    """One private node: its ports and directories, started and stopped by the caller."""

    name: str
    home: Path  # shared by a cluster's nodes: the Erlang cookie lives there
    amqp_port: int
    stream_port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None
    _checked_pid: int = 0

    @property
    def node(self) -> str:
        """The Erlang node name."""
        return f"{self.name}@localhost"

    @property
    def amqp_url(self) -> str:
        """Where AMQP 0.9.1 clients connect (the guest account works from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def _dir(self) -> Path:
        return self.home / self.name

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of rabbitmqctl aimed at it."""
        d = self._dir
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "TOKENLIFE_"))},
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            # Distribution on loopback only, like the machine's broker.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        """Write the node's files and start its server (not waiting: see `wait`)."""
        d = self._dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{self.stream_port}\n"
            # The stream protocol tells clients where a stream's members are: this node, by loopback.
            "stream.advertised_host = 127.0.0.1\n"
            "loopback_users = none\n"
        )
        (d / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        with (d / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(_SCRIPTS / "rabbitmq-server")], env=self.env(), stdout=out, stderr=out
            )

    def wait(self, timeout: float = 90.0) -> None:
        """Until the node and its plugins run; RuntimeError with the log's tail if they do not."""
        done = self.ctl("wait", "--timeout", str(int(timeout)), str(self._dir / "pid"), timeout=timeout + 10)
        if done.returncode != 0:
            raise RuntimeError(f"{self.node} did not start: {done.stdout[-500:]} {self.log_tail()}")

    def log_tail(self) -> str:
        """The last lines the server wrote."""
        out = self._dir / "server.out"
        return out.read_text(errors="replace")[-1500:] if out.exists() else ""

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl aimed at this node (its output in stdout, stderr merged)."""
        return subprocess.run(
            [str(_SCRIPTS / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def pid(self) -> int:
        """The node's beam.smp process: its pid file, checked once against the node's own answer
        (`os:getpid()`) and /proc (a beam.smp); RuntimeError when they disagree."""
        pid = int((self._dir / "pid").read_text().strip())
        if pid != self._checked_pid:
            said = self.ctl("eval", "list_to_integer(os:getpid()).").stdout.strip().splitlines()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not said or said[-1] != str(pid) or b"beam.smp" not in cmdline:
                raise RuntimeError(f"pid file {pid}, node says {said[-1:]}: not {self.node}'s beam.smp")
            self._checked_pid = pid
        return pid

    def cpu_seconds(self) -> float:
        """User + system CPU the node's process has used so far (/proc/<pid>/stat, fields 14 and 15)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def memory(self) -> int:
        """Bytes the node's Erlang VM has allocated (erlang:memory(total)), asked of the node itself."""
        done = self.ctl("eval", "erlang:memory(total).")
        if done.returncode != 0:
            raise RuntimeError(f"{self.node}: {done.stdout[-300:]}")
        return int(done.stdout.strip().splitlines()[-1])

    def kill(self) -> None:
        """kill -9 the node's VM (a crashed machine, not a shutdown), and reap the script."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (OSError, RuntimeError, ValueError):
            pass
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop the node cleanly, killing it when that does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=60)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def start_cluster(
    home: Path, prefix: str, count: int, into: list[RabbitNode] | None = None
) -> list[RabbitNode]:
    """`count` private nodes (started together); the second and later join the first. Stopped on failure.

    `into`, when given, receives the nodes before they start: a caller that gives up waiting (its thread
    cannot be cancelled) can still stop them.
    """
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
    (home / "rabbitmq-env.conf").write_text("")
    taken: set[int] = set()
    nodes = [
        RabbitNode(f"{prefix}-{i}", home, _free_port(taken), _free_port(taken), _free_port(taken))
        for i in range(1, count + 1)
    ]
    if into is not None:
        into.extend(nodes)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait()
        for node in nodes[1:]:
            for step in (("stop_app",), ("join_cluster", nodes[0].node), ("start_app",)):
                done = node.ctl(*step)
                if done.returncode != 0:
                    raise RuntimeError(f"{node.node} {step[0]}: {done.stdout[-500:]}")
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: list[RabbitNode]) -> None:
    """Stop every node (a failure to stop one does not keep the others running)."""
    for node in nodes:
        try:
            node.stop()
        except Exception:  # cleanup goes on: the next node must stop too
            node.kill()
    deadline = time.monotonic() + 30
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None and time.monotonic() < deadline:
            node.proc.kill()


def remove(home: Path) -> None:
    """Delete the nodes' files."""
    shutil.rmtree(home, ignore_errors=True)
