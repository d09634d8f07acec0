"""wrk, the C HTTP load generator, when it is installed (`apt-get install wrk`): load that leaves the cores to
the server under test, where an asyncio client in Python would take one of the two.

`run()` drives one URL for a number of seconds over keep-alive connections and returns what wrk counted:
requests, 2xx rate, latency percentiles. With `tokens`, each request carries the next one of them as its
bearer token (a Lua script), so every logout of a round ends a session of its own, or is a form POST to the
token endpoint (a login or a refresh: `form:` lines).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from typing import Any

# Each line of the token file is one request: "form:<body>" is a POST of that urlencoded body to the token
# endpoint (a login or a refresh), anything else (optionally "bearer:<token>") the configured method and path
# with that bearer token. The lines are taken in turn, from the first again when they run out.
_SCRIPT = """
local lines = {}
for line in io.lines(os.getenv("TOKENLIFE_WRK_TOKENS")) do lines[#lines + 1] = line end
local method, path = os.getenv("TOKENLIFE_WRK_METHOD"), os.getenv("TOKENLIFE_WRK_PATH")
local form = {["Content-Type"] = "application/x-www-form-urlencoded"}
local i = 0
request = function()
  i = i + 1
  local line = lines[((i - 1) % #lines) + 1]
  if line:sub(1, 5) == "form:" then
    return wrk.format("POST", "/oauth/token", form, line:sub(6))
  end
  if line:sub(1, 7) == "bearer:" then line = line:sub(8) end
  return wrk.format(method, path, {["Authorization"] = "Bearer " .. line, ["Content-Length"] = "0"}, "")
end
"""
_REQUESTS = re.compile(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def available() -> str | None:
    """The path of wrk, or None when it is not installed."""
    return shutil.which("wrk")


def pinned(cpu: int | None) -> list[str]:
    """The prefix that runs a command on one CPU (`taskset`), when asked and when there is more than one."""
    if cpu is None or (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def parse(out: str) -> dict[str, Any]:
    """What a `wrk --latency` run printed: requests, seconds, non-2xx, socket errors, p50 and p99 in ms."""
    done = _REQUESTS.search(out)
    if done is None:
        raise RuntimeError("wrk: " + " ".join(out.split())[-200:])
    requests = int(done.group(1))
    seconds = float(done.group(2)) * _SECONDS[done.group(3)]
    non_2xx = _NON_2XX.search(out)
    errors = _SOCKET_ERRORS.search(out)
    percentiles = {p: float(v) * _SECONDS[unit] * 1000 for p, v, unit in _PERCENTILE.findall(out)}
    failed = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "requests": requests,
        "seconds": seconds,
        "rate": (requests - failed) / seconds,
        "non_2xx": failed,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "p50_ms": percentiles.get("50", float("nan")),
        "p99_ms": percentiles.get("99", float("nan")),
    }


async def run(
    wrk: str,
    url: str,
    *,
    seconds: float,
    connections: int,
    method: str = "GET",
    tokens: list[str] | None = None,
    headers: dict[str, str] | None = None,
    cpu: int | None = None,
) -> dict[str, Any]:
    """One wrk run (one thread) against `url`, pinned to `cpu` if given; see `parse` for what it returns."""
    args = [*pinned(cpu), wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as scratch:
        if tokens is not None:
            script = os.path.join(scratch, "tokens.lua")
            token_file = os.path.join(scratch, "tokens")
            with open(script, "w") as f:  # noqa: ASYNC230 - before wrk starts
                f.write(_SCRIPT)
            with open(token_file, "w") as f:  # noqa: ASYNC230 - before wrk starts
                f.write("\n".join(tokens))
            path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
            env |= {
                "TOKENLIFE_WRK_TOKENS": token_file,
                "TOKENLIFE_WRK_METHOD": method,
                "TOKENLIFE_WRK_PATH": path,
            }
            args += ["-s", script]
        process = await asyncio.create_subprocess_exec(
            *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        out = (await process.communicate())[0].decode()
    if process.returncode != 0:
        raise RuntimeError("wrk: " + " ".join(out.split())[-200:])
    return parse(out)
