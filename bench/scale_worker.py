"""Many resource instances in one process, for bench/scale.py: each the project's real feed and state (Feed,
RevocationState, AuthClient), with a broker connection of its own, on the queues or the stream transport.

    python -m bench.scale_worker CONFIG_JSON      (auth_url, amqp_url, exchange, transport, stream_port,
                                                  count, report: host:port, name)

Commands on stdin, one a line: `restart` (every instance stops and a new one starts at once, with an empty
state: a restart storm), `counters`, `quit`. On stdout: `ready <monotonic ns>` once every instance has caught
up (after the start and after each restart), `counters <json>` (summed over the instances).

When every instance of the process has applied an event, one UDP datagram "<name> <position> <ns>" goes to
the benchmark, at the time the last of them applied it (CLOCK_MONOTONIC: one clock for every process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.fanout_serve import reporter
from resource_service.check.state import RevocationState
from resource_service.feed.auth_client import AuthClient
from resource_service.feed.loop import Feed
from resource_service.settings import ResourceSettings

# The replay window of the benchmark's instances: the shortest token lifetime the settings allow, so that
# a stream a few seconds old already reaches back a whole window (the events' tokens expire as fast).
TOKEN_TTL = 10
FIRST_WAVE = 10
_COUNTED = ("heartbeats", "snapshots", "replays", "replay_refused", "gap_fills", "polls", "reconnects")


@dataclass
class _Instance:
    feed: Feed
    client: AuthClient


class Worker:
    """`count` instances and what they applied, position by position."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.count = int(config["count"])
        self.instances: list[_Instance] = []
        self.applied: Counter[int] = Counter()  # position -> instances that applied it
        self.reported: set[int] = set()
        self.events = 0  # events applied, every instance, this process's lifetime
        self.report = reporter(str(config["name"]))
        self.settings = ResourceSettings(
            env="dev",
            auth_url=config["auth_url"],
            amqp_url=config["amqp_url"],
            exchange=config["exchange"],
            transport=config["transport"],
            stream_port=int(config["stream_port"]),
            access_token_ttl=TOKEN_TTL,
            leeway=0,
            stream_margin=0.0,
            service_client_id=config["client_id"],
            service_client_secret=config["client_secret"],
        )

    def _instance(self) -> _Instance:
        s = self.settings
        client = AuthClient(
            s.auth_urls,
            s.service_client_id,
            s.service_client_secret.get_secret_value(),
            timeout=s.http_timeout,
        )
        state = RevocationState(leeway=s.leeway + 30.0)
        feed = Feed(s, state, client)

        def applied(_delay: float, _exemplar: dict[str, str] | None) -> None:
            # Called right after the state changed: from now on this instance refuses what the event revokes.
            self.events += 1
            position = state.applied_position
            self.applied[position] += 1
            if self.applied[position] == self.count and position not in self.reported:
                self.reported.add(position)
                del self.applied[position]
                self.report(f"{position}")

        feed.on_applied.append(applied)
        return _Instance(feed, client)

    async def start(self, wave: int) -> None:
        """Start the instances `wave` at a time, each wave once the one before has caught up (all at once
        when `wave` is the count); returns when all have caught up."""
        self.instances = []
        while len(self.instances) < self.count:
            started = [self._instance() for _ in range(min(wave, self.count - len(self.instances)))]
            self.instances += started
            await asyncio.gather(*(i.feed.start() for i in started))
            # Polled: a feed has no event to await for its first catch-up.
            while not all(i.feed.caught_up for i in started):  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop every instance and close its client."""
        await asyncio.gather(*(i.feed.stop() for i in self.instances))
        await asyncio.gather(*(i.client.aclose() for i in self.instances))
        self.instances = []

    def counters(self) -> dict[str, int]:
        """The instances' feed counters summed, and the events applied."""
        total: Counter[str] = Counter()
        for i in self.instances:
            total.update({k: i.feed.counters[k] for k in _COUNTED})
        return {"events": self.events, **total}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _serve(config: dict[str, Any]) -> None:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    # The first start in waves, so that the run begins whatever the auth service can answer at once; the
    # restart storm below is the measure of all at once.
    await worker.start(FIRST_WAVE)
    _say(f"ready {time.monotonic_ns()}")
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line in ("", "quit"):
            break
        if line == "restart":
            await worker.stop()
            await worker.start(worker.count)
            _say(f"ready {time.monotonic_ns()}")
        elif line == "counters":
            _say(f"counters {json.dumps(worker.counters())}")
    await worker.stop()


def main(argv: list[str]) -> int:
    """Run the instances until `quit` or the end of stdin."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = json.loads(argv[0])
    try:
        import uvloop
    except ImportError:  # as uvicorn falls back
        asyncio.run(_serve(config))
    else:
        uvloop.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
