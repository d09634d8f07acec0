"""The README's Node.js push receiver, run as written against a real `tokenlife auth serve`: it verifies and
prints a logout's SET (skipped where there is no `node`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD, add_user, free_port, running_auth_server
from tests.ssf_receiver import PUSH, RECEIVER_A, SESSION_REVOKED, bearer, clients_json

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"
EMAIL = "node@example.com"


def _start(node: str, where: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([node, "receiver.js"], cwd=where, env=env, stdout=subprocess.PIPE, text=True)


async def test_the_readme_push_receiver_verifies_and_prints_a_logout(
    database_url: str, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the README's receiver is JavaScript")
    [source] = re.findall(r"```js\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "receiver.js").write_text(source)
    await add_user(database_url, EMAIL)
    port = free_port()
    with running_auth_server(
        database_url, TOKENLIFE_CLIENTS=clients_json(), TOKENLIFE_SSF_ENABLED="true"
    ) as base:
        env = os.environ | {"ISSUER": base, "AUDIENCE": RECEIVER_A[0], "PORT": str(port)}
        receiver = _start(node, tmp_path, env)
        try:
            async with httpx.AsyncClient(base_url=base) as client:
                token = (
                    await client.post(
                        "/oauth/token", data={"grant_type": "client_credentials"}, auth=RECEIVER_A
                    )
                ).json()["access_token"]
                stream = {
                    "delivery": {"method": PUSH, "endpoint_url": f"http://127.0.0.1:{port}/"},
                    "events_requested": [SESSION_REVOKED],
                }
                assert (
                    await client.post("/ssf/streams", json=stream, headers=bearer(token))
                ).status_code == 201
                await asyncio.sleep(1.5)  # the deliverer reads the streams every second
                login = await client.post(
                    "/oauth/token", data={"grant_type": "password", "username": EMAIL, "password": PASSWORD}
                )
                await client.post("/v1/auth/logout", headers=bearer(login.json()["access_token"]))
            assert receiver.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(receiver.stdout.readline), 20)
            assert " session-revoked " in line
            assert "The user signed out of this session." in line
        finally:
            receiver.kill()
            receiver.wait(timeout=10)
            if receiver.stdout:
                receiver.stdout.close()
