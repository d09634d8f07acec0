"""The dev stack's services as child processes, kept running: a crashed one is restarted, and says so.

Each service runs in a session of its own, so the terminal's signals (Ctrl-C, a hang-up) reach only the
`tokenlife dev` process, which stops the services in order and then the database. A service that exits on
its own is started again after a short backoff (doubling up to a cap while it keeps failing, back to the
first once it has stayed up a while); the others keep running, and the console says what happened.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO

import httpx

__all__ = ["Service", "Supervisor"]

STOP_WITHIN = 15.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # up this long: the next crash is a new one, restarted after the first backoff again


def _how(code: int) -> str:
    """How a process ended, in words: 'killed by SIGKILL' or 'exit status 1'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Service:
    """One service of the stack: its command line, its log file, its readiness URL and its process."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_url: str
    ) -> None:
        self.name, self.argv, self.env, self.log_path, self.ready_url = name, argv, env, log_path, ready_url
        self._log: IO[bytes] = log_path.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.backoff = FIRST_BACKOFF
        self.restart_at: float | None = None  # set while it is down, waiting for its restart
        self.restarts = 0
        self.awaiting_ready = False  # restarted, and not said ready again yet

    def spawn(self) -> None:
        """Start the process (in a session of its own: see the module docstring)."""
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    def ready(self) -> bool:
        """Whether its /readyz answers 200 now."""
        try:
            return httpx.get(self.ready_url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def exited(self) -> int | None:
        """Its exit status once it has ended (negative: the signal that ended it), else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_WITHIN; closes its log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_WITHIN)
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Supervisor:
    """Keeps every service running; `watch()` is one round of looking, called in the stack's loop.

    Every start of a process runs inside `guard()`: the stack holds its stop signals there, so that a
    signal cannot leave a child started but unrecorded (and so never stopped)."""

    def __init__(
        self,
        services: list[Service],
        say: Callable[[str], None],
        guard: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.services, self._say, self._guard = services, say, guard

    def start(self) -> None:
        """Start every service."""
        for service in self.services:
            with self._guard():
                service.spawn()

    def wait_ready(self, within: float) -> str | None:
        """Wait until every service is ready at first start: None, or why not (a service that cannot start
        at all is not restarted: its log says why, and a loop of restarts would only hide it)."""
        end = time.monotonic() + within
        pending = list(self.services)
        while pending:
            for service in self.services:
                code = service.exited()
                if code is not None:
                    how, log = _how(code), service.log_path
                    return (
                        f"the {service.name} exited while starting ({how}); its log {log}:\n{service.tail()}"
                    )
            pending = [s for s in pending if not s.ready()]
            if time.monotonic() > end:
                return f"not ready within {within:.0f} s: {', '.join(s.name for s in pending)}"
            time.sleep(0.2)
        return None

    def watch(self) -> None:
        """Restart what has exited once its backoff is over, and say when a restarted service is ready."""
        now = time.monotonic()
        for service in self.services:
            code = service.exited()
            if code is None:
                if service.awaiting_ready and service.ready():
                    service.awaiting_ready = False
                    self._say(f"the {service.name} is ready again (restart {service.restarts})")
                if now - service.started_at >= STABLE_AFTER:
                    service.backoff = FIRST_BACKOFF
            elif service.restart_at is None:
                delay = service.backoff
                service.backoff = min(service.backoff * 2, MAX_BACKOFF)
                service.restart_at = now + delay
                self._say(
                    f"the {service.name} exited ({_how(code)}); restarting it in {delay:.1f} s "
                    f"(its log: {service.log_path})"
                )
            elif now >= service.restart_at:
                service.restart_at = None
                service.restarts += 1
                service.awaiting_ready = True
                with self._guard():
                    service.spawn()

    def stop(self) -> None:
        """Stop every service, the last started first."""
        for service in reversed(self.services):
            service.stop()
