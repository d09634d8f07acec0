"""`tokenlife dev` end to end: one command brings up the database and both services, keeps them up, and stops
them all on Ctrl-C or a hang-up.

It runs with TOKENLIFE_DATABASE_URL pointing at nothing (port 1) and no broker variable, to show that the
command never uses the machine's own servers: everything it needs, it starts from the data directory. Every
signal here is a real one sent to real processes (the stack, its process group, a service).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tokenlife import embedded_db

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STARTS_WITHIN = 90.0
PASSWORD = "a long enough password"


class Dev:
    """A `tokenlife dev` process on a data directory and two ports (free ones unless given)."""

    def __init__(self, data_dir: Path, ports: tuple[int, int] | None = None) -> None:
        self.data_dir = data_dir
        self.auth_port, self.resource_port = ports or (free_port(), free_port())
        self.auth = f"http://127.0.0.1:{self.auth_port}"
        self.resource = f"http://127.0.0.1:{self.resource_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
            "TOKENLIFE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/nothing"
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: list[str] = []
        self.children: set[int] = set()  # every service pid seen, to clean up after a failed test
        self._reading = threading.Event()
        self._reader: threading.Thread | None = None

    def argv(self) -> list[str]:
        """The command line."""
        return [
            *(sys.executable, "-m", "tokenlife", "dev", "--data-dir", str(self.data_dir)),
            *("--auth-port", str(self.auth_port), "--resource-port", str(self.resource_port)),
        ]

    def _read(self, fd: int) -> None:
        """Collect its output, line by line, until told to stop or the pipe ends."""
        pending = b""
        while self._reading.is_set():
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            self.output.extend(line.decode(errors="replace") + "\n" for line in lines)

    def launch(self) -> None:
        """Start it in a process group of its own, as a shell starts a job, and collect its output."""
        self.proc = subprocess.Popen(
            self.argv(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0
        )
        assert self.proc.stdout is not None
        self._reading.set()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout.fileno(),), daemon=True)
        self._reader.start()

    def start(self) -> str:
        """Launch it and wait until it says it is running; returns the demo password it printed."""
        self.launch()
        found = self.wait_for(r"password: (\S+)", STARTS_WITHIN)
        self.children |= set(self.services().values())
        return found.group(1)

    def text(self) -> str:
        """Everything it printed so far."""
        return "".join(self.output)

    def wait_for(self, pattern: str, within: float = 30.0) -> re.Match[str]:
        """Wait until its output holds `pattern`; fails if it ends first or takes longer than `within`."""
        assert self.proc is not None
        end = time.monotonic() + within
        while not (found := re.search(pattern, self.text())):
            if self.proc.poll() is not None and (self._reader is None or not self._reader.is_alive()):
                pytest.fail(f"it ended ({self.proc.returncode}) before {pattern!r}:\n{self.text()}")
            assert time.monotonic() < end, f"no {pattern!r} within {within} s:\n{self.text()}"
            time.sleep(0.05)
        return found

    def wait_for_child(self, program: str, within: float = 60.0) -> None:
        """Wait until one of its child processes runs `program` (the wheel's initdb or pg_ctl, say)."""
        assert self.proc is not None
        end = time.monotonic() + within
        while not any(Path(argv[0]).name == program for argv in self._children().values()):
            assert self.proc.poll() is None, f"it ended before running {program}:\n{self.text()}"
            assert time.monotonic() < end, f"no {program} within {within} s:\n{self.text()}"
            time.sleep(0.002)

    def _children(self) -> dict[int, list[str]]:
        """Its child processes' command lines, read from /proc."""
        assert self.proc is not None
        found: dict[int, list[str]] = {}
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except FileNotFoundError:
            return found
        for pid in map(int, children):
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except FileNotFoundError:
                continue
        return found

    def services(self) -> dict[str, int]:
        """The pids of its service processes, by role ('auth', 'resource')."""
        return {
            role: pid
            for pid, argv in self._children().items()
            for role in ("auth", "resource")
            if role in argv and "serve" in argv
        }

    def hang_up(self) -> None:
        """Close its terminal: SIGHUP to its process group, and nobody reads its output any more."""
        assert self.proc is not None
        self._close()
        os.killpg(self.proc.pid, signal.SIGHUP)

    def interrupt(self) -> int:
        """Ctrl-C, and its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        self._close()
        return code

    def _close(self) -> None:
        """Stop reading its output and close our end of the pipe."""
        self._reading.clear()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """Last resort after a failed test: the stack and every service it started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory; a server left behind by a failed test is stopped.

    Not under pytest's basetemp: run as root, the server runs as a user of its own, and any pytest starting
    on the machine meanwhile makes the basetemps' parent readable by root alone (as tests/conftest.py)."""
    parent = Path(tempfile.mkdtemp(prefix="tokenlife-dev-test-"))
    path = parent / "tokenlife"
    try:
        yield path
        if embedded_db.owner_pid(path) is None and (path / embedded_db.PGDATA / "postmaster.pid").exists():
            embedded_db.start(path).stop()
    finally:
        postmaster = path / embedded_db.PGDATA / "postmaster.pid"
        if embedded_db.running_url(path) is not None:  # still running (a regression): never leak a server
            os.kill(int(postmaster.read_text().split()[0]), signal.SIGQUIT)
        shutil.rmtree(parent, ignore_errors=True)


def _login(auth: str, password: str, email: str = "demo@example.com") -> str:
    form = {"grant_type": "password", "username": email, "password": password}
    response = httpx.post(f"{auth}/oauth/token", data=form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _whoami(resource: str, token: str) -> int:
    return httpx.get(f"{resource}/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code


def _refused(resource: str, token: str) -> None:
    end = time.monotonic() + 10
    while _whoami(resource, token) != 401:
        assert time.monotonic() < end, "the logged-out token is still accepted"
        time.sleep(0.05)


def _down(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return True
    return False


def _stopped(data_dir: Path) -> None:
    """Nobody owns the data directory and its database is not running."""
    assert embedded_db.owner_pid(data_dir) is None
    assert not (data_dir / embedded_db.PGDATA / "postmaster.pid").exists()


def _leave_time_wait(port: int) -> None:
    """Leave a connection in TIME_WAIT on the port, as a browser's idle keep-alive does when the server
    closes it at Ctrl-C; then a bind without SO_REUSEADDR fails for up to a minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            server_end, _ = listener.accept()
            server_end.close()  # the server's end closes first, so that end waits in TIME_WAIT
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))


def _tokenlife_dev(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenlife", "dev", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dev_runs_the_walkthrough_stops_on_ctrl_c_and_restarts_on_its_data(data_dir: Path) -> None:
    first = Dev(data_dir)
    try:
        password = first.start()
        assert "generated a signing key" in first.text()  # dev mode says so
        token = _login(first.auth, password)
        assert _whoami(first.resource, token) == 200
        logout = httpx.post(f"{first.auth}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert logout.status_code == 200
        _refused(first.resource, token)
        assert "long-poll" in first.text()  # no broker: the revocation came by long-poll

        second = Dev(data_dir)
        refused = subprocess.run(second.argv(), env=second.env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "already running" in refused.stderr
        assert _down(second.auth)  # it started nothing

        assert first.interrupt() == 0
    finally:
        first.kill()
    assert _down(first.auth)
    assert _down(first.resource)
    _stopped(data_dir)

    # Right after Ctrl-C, on the same ports, with a connection of the last run still in TIME_WAIT.
    _leave_time_wait(first.auth_port)
    again = Dev(data_dir, (first.auth_port, first.resource_port))
    try:
        assert again.start() == password  # the same data: the same demo user
        assert "generated a signing key" not in again.text()  # the key from the first start
        assert _whoami(again.resource, token) == 401  # the logout from before the restart still holds
        assert _whoami(again.resource, _login(again.auth, password)) == 200
        assert again.interrupt() == 0
    finally:
        again.kill()
    assert json.loads((data_dir / "demo-user.json").read_text())["email"] == "demo@example.com"


def test_dev_points_the_console_at_its_own_resource_port(data_dir: Path) -> None:
    dev = Dev(data_dir)
    try:
        dev.start()
        config = httpx.get(f"{dev.auth}/console/config.json")
        assert config.json()["resource_url"] == dev.resource
        csp = httpx.get(f"{dev.auth}/console/").headers["content-security-policy"]
        assert f"connect-src 'self' {dev.resource}" in csp
        assert dev.interrupt() == 0
    finally:
        dev.kill()


def test_dev_user_add_reaches_the_running_stack_and_a_stopped_one(data_dir: Path) -> None:
    dev = Dev(data_dir)
    try:
        dev.start()
        added = _tokenlife_dev("--data-dir", str(data_dir), "user", "add", "ada@example.com", stdin=PASSWORD)
        assert added.returncode == 0, added.stderr
        assert "user ada@example.com added" in added.stdout
        assert _whoami(dev.resource, _login(dev.auth, PASSWORD, "ada@example.com")) == 200

        refused = _tokenlife_dev("user", "add", "not-an-email", "--data-dir", str(data_dir), stdin=PASSWORD)
        assert refused.returncode == 2
        assert refused.stderr.splitlines() == [
            "tokenlife: 'not-an-email' is not an email address: An email address must have an @-sign."
        ]
        assert dev.interrupt() == 0
    finally:
        dev.kill()
    _stopped(data_dir)

    # Stopped: the command starts the database for the moment, adds the user, and stops it again.
    added = _tokenlife_dev("user", "add", "grace@example.com", "--data-dir", str(data_dir), stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    _stopped(data_dir)
    again = Dev(data_dir)
    try:
        again.start()
        assert _whoami(again.resource, _login(again.auth, PASSWORD, "grace@example.com")) == 200
        assert again.interrupt() == 0
    finally:
        again.kill()


def test_dev_user_add_while_the_stack_starts_asks_to_try_again(data_dir: Path) -> None:
    data_dir.mkdir()
    with (data_dir / embedded_db.LOCK_NAME).open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an owner whose server is not up yet
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        args = ("user", "add", "ada@example.com", "--data-dir", str(data_dir))
        refused = _tokenlife_dev(*args, stdin=PASSWORD)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"tokenlife: the dev stack on {data_dir.resolve()} (pid {os.getpid()}) is starting: try again"
    ]


def test_closing_the_terminal_stops_the_services_and_the_database(data_dir: Path) -> None:
    dev = Dev(data_dir)
    try:
        dev.start()
        dev.hang_up()
        assert dev.proc is not None
        assert dev.proc.wait(timeout=60) == 0
    finally:
        dev.kill()
    assert _down(dev.auth)
    assert _down(dev.resource)
    _stopped(data_dir)
    assert json.loads((data_dir / embedded_db.PGDATA / embedded_db.HANDLES).read_text()) == []


def test_a_hang_up_while_the_database_starts_leaves_nothing_running(data_dir: Path) -> None:
    # The signal goes to the whole process group, so it reaches the wheel's initdb and pg_ctl as well.
    for step, program in (("first start", "initdb"), ("later start", "pg_ctl")):
        if step == "later start":
            ready = Dev(data_dir)  # the data directory is whole again: a start runs to the end
            try:
                ready.start()
                assert ready.interrupt() == 0
            finally:
                ready.kill()
        dev = Dev(data_dir)
        try:
            dev.launch()
            dev.wait_for_child(program)
            dev.hang_up()
            assert dev.proc is not None
            assert dev.proc.wait(timeout=60) == 0, (step, dev.text())
        finally:
            dev.kill()
        _stopped(data_dir)
        assert embedded_db.running_url(data_dir) is None, step


def test_a_killed_resource_service_is_restarted_and_the_auth_service_stays_up(data_dir: Path) -> None:
    dev = Dev(data_dir)
    try:
        password = dev.start()
        before = dev.services()
        token = _login(dev.auth, password)
        os.kill(before["resource"], signal.SIGKILL)
        dev.wait_for(r"the resource service exited \(killed by SIGKILL\); restarting it in \d")
        dev.wait_for(r"the resource service is ready again", within=60)
        after = dev.services()
        dev.children |= set(after.values())
        assert after["auth"] == before["auth"]  # never stopped
        assert after["resource"] != before["resource"]
        assert _whoami(dev.resource, token) == 200  # rebuilt from the log, serving again
        logout = httpx.post(f"{dev.auth}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert logout.status_code == 200
        _refused(dev.resource, token)  # the restarted instance follows the log too
        assert dev.interrupt() == 0
    finally:
        dev.kill()
    _stopped(data_dir)


def test_a_start_after_a_killed_owner_stops_the_database_at_its_end(data_dir: Path) -> None:
    # An owner killed outright leaves its server running and its pid among the wheel's handles.
    script = (
        "import os, signal, sys; from pathlib import Path; from tokenlife import embedded_db; "
        "embedded_db.start(Path(sys.argv[1])); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.Popen([sys.executable, "-c", script, str(data_dir)])
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert embedded_db.running_url(data_dir) is not None
    handles = data_dir / embedded_db.PGDATA / embedded_db.HANDLES
    assert json.loads(handles.read_text()) == [killed.pid]

    embedded_db.start(data_dir).stop()  # the next owner, stopping as `tokenlife dev` does at Ctrl-C
    _stopped(data_dir)
    assert embedded_db.running_url(data_dir) is None


def test_make_run_passes_its_args_to_tokenlife_dev() -> None:
    # Run under `make test` (as CI does), a nested make would print "Leaving directory" last: not here.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "ARGS=--auth-port 18000 --resource-port 18001"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    assert dry.stdout.splitlines()[-1].endswith("/bin/tokenlife dev --auth-port 18000 --resource-port 18001")
