"""Fixtures for the console's browser tests: a real auth service and resource service, and headless Chromium.

Chromium is Debian's package (Playwright's own download is not used): TOKENLIFE_CHROMIUM names another
binary. Without Playwright or the binary the tests skip saying why, except under CI, where it is an error.

Playwright's sync API keeps an event loop running in this thread, so asyncio.run() is unusable while a
browser is open: `run_async` runs a coroutine in a thread of its own, and the browser fixture depends on the
stack fixture so that it closes first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.conftest import add_user, start_auth_server
from tests.e2e.test_resource_e2e import ResourceProcess, wait_for

if TYPE_CHECKING:  # Playwright is an optional extra: imported for real only inside the fixture
    from playwright.sync_api import Browser

CHROMIUM = os.environ.get("TOKENLIFE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--headless",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("TOKENLIFE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "tmp" / "artifacts")
)
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a fresh thread (see the module docstring)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _no_browser(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Stack:
    """The console's URL, the resource service's URL, and a way to add users."""

    auth_url: str
    resource_url: str
    database_url: str

    @property
    def console(self) -> str:
        """The console page."""
        return f"{self.auth_url}/console/"

    def add_user(self, email: str) -> str:
        """A user with the tests' password; their id."""
        return run_async(add_user(self.database_url, email))


@pytest.fixture
def stack_factory(database_url: str, amqp_url: str, exchange_name: str) -> Iterator[Callable[..., Stack]]:
    """Starts the auth service (relay on, console pointed at the resource service) and a resource service."""
    started: list[tuple[subprocess.Popen[bytes], ResourceProcess]] = []

    def start(**auth_extra: str) -> Stack:
        resource = ResourceProcess("", amqp_url, exchange_name)
        proc, auth_url = start_auth_server(
            database_url,
            amqp_url,
            TOKENLIFE_EXCHANGE=exchange_name,
            TOKENLIFE_CONSOLE_RESOURCE_URL=resource.base,
            **auth_extra,
        )
        resource.env["TOKENLIFE_AUTH_URL"] = auth_url
        resource.env["TOKENLIFE_CORS_ORIGINS"] = json.dumps([auth_url])
        started.append((proc, resource))
        resource.start()
        wait_for(lambda: _ready(resource.base), "the resource service is ready")
        return Stack(auth_url, resource.base, database_url)

    yield start
    for proc, resource in started:
        resource.kill()
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def _ready(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def browser(stack_factory: Callable[..., Stack]) -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright; closed before the stack stops."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("Playwright is not installed: pip install -e '.[browser]'")
    if not os.access(CHROMIUM, os.X_OK):
        _no_browser(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set TOKENLIFE_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (TOKENLIFE_TEST_ARTIFACTS, or tmp/artifacts in the checkout)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots are, when a browser test wrote some."""
    if ARTIFACTS.is_dir() and any(ARTIFACTS.glob("console-*.png")):
        terminalreporter.write_line(f"console screenshots: {ARTIFACTS}")
