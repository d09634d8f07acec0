"""`tokenlife dev` end to end: one command brings up the database and both services, Ctrl-C stops it all.

It runs with TOKENLIFE_DATABASE_URL pointing at nothing (port 1) and no broker variable, to show that the
command never uses the machine's own servers: everything it needs, it starts from the data directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tokenlife import embedded_db

pytestmark = pytest.mark.e2e

STARTS_WITHIN = 90.0


class Dev:
    """A `tokenlife dev` process on a data directory and two free ports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.auth_port, self.resource_port = free_port(), free_port()
        self.auth = f"http://127.0.0.1:{self.auth_port}"
        self.resource = f"http://127.0.0.1:{self.resource_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
            "TOKENLIFE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/nothing"
        }
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def argv(self) -> list[str]:
        """The command line."""
        return [
            sys.executable,
            "-m",
            "tokenlife",
            "dev",
            "--data-dir",
            str(self.data_dir),
            "--auth-port",
            str(self.auth_port),
            "--resource-port",
            str(self.resource_port),
        ]

    def start(self) -> str:
        """Start it and read its output until it says it is running; returns the demo password it printed."""
        self.proc = subprocess.Popen(
            self.argv(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        end = time.monotonic() + STARTS_WITHIN
        for line in self.proc.stdout:
            self.output.append(line)
            found = re.search(r"password: (\S+)", line)
            if found:
                return found.group(1)
            assert time.monotonic() < end, "".join(self.output)
        pytest.fail("tokenlife dev ended before it was running:\n" + "".join(self.output))

    def interrupt(self) -> int:
        """Ctrl-C, and its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        if self.proc.stdout:
            self.output.append(self.proc.stdout.read())
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        """Last resort after a failed test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory; a server left behind by a failed test is stopped."""
    path = tmp_path / "tokenlife"
    yield path
    if embedded_db.owner_pid(path) is None and (path / embedded_db.PGDATA / "postmaster.pid").exists():
        embedded_db.start(path).stop()


def _login(auth: str, password: str) -> str:
    form = {"grant_type": "password", "username": "demo@example.com", "password": password}
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


def test_dev_runs_the_walkthrough_stops_on_ctrl_c_and_restarts_on_its_data(data_dir: Path) -> None:
    first = Dev(data_dir)
    try:
        password = first.start()
        token = _login(first.auth, password)
        assert _whoami(first.resource, token) == 200
        logout = httpx.post(f"{first.auth}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert logout.status_code == 200
        _refused(first.resource, token)
        assert "long-poll" in "".join(first.output)  # no broker: the revocation came by long-poll

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
    assert embedded_db.owner_pid(data_dir) is None
    assert not (data_dir / embedded_db.PGDATA / "postmaster.pid").exists()  # the database stopped too

    again = Dev(data_dir)
    try:
        assert again.start() == password  # the same data: the same demo user
        assert _whoami(again.resource, token) == 401  # the logout from before the restart still holds
        assert _whoami(again.resource, _login(again.auth, password)) == 200
        assert again.interrupt() == 0
    finally:
        again.kill()
    assert json.loads((data_dir / "demo-user.json").read_text())["email"] == "demo@example.com"
