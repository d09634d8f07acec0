"""The push deliverer: on one auth instance at a time, a Pusher task (push.py) for every enabled push stream.

Leadership is the relay's mechanism (relay/leader.py: a session-level advisory lock on a dedicated
connection, and a lease a standby ends when it lapses), with a lock key and a lease row of its own
(ssf_leader), so one instance delivers each stream, whichever instance leads the relay, and with the relay
off. When the leader dies or pauses, a standby leads within the lease timeout and every stream resumes from
its cursor in PostgreSQL (what was sent after the cursor's last update is sent again: at least once).

The streams are read again every `refresh_interval`: a new stream gets a task, a deleted, paused or disabled
one loses its task, and a changed one (its endpoint, events or subjects: `updated_at`) gets a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from auth_service.db.engine import asyncpg_dsn
from auth_service.relay.leader import LeaderLock
from auth_service.ssf import streams
from auth_service.ssf.push import Pusher
from auth_service.ssf.tail import LogTail
from auth_service.ssf.updates import Announce
from auth_service.tokens.keyring import SigningKey

log = logging.getLogger("tokenlife.ssf")

SSF_LOCK_KEY = 0x746F6B5F73736664  # "tok_ssfd", distinct from the relay's and the append lock's
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Deliverer:
    """Leads (or stands by) and, while leading, runs one Pusher per enabled push stream."""

    def __init__(
        self,
        database_url: str,
        issuer: str,
        key: Callable[[], SigningKey | None],
        changed: Callable[[], asyncio.Event],
        announce: Announce,
        *,
        push_timeout: float,
        max_backoff: float,
        retention: float,
        leader_retry_interval: float = 0.25,
        lease_timeout: float = 1.5,
        refresh_interval: float = 1.0,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._issuer = issuer
        self._key = key
        self._changed = changed
        self._announce = announce
        self._push_timeout = push_timeout
        self._max_backoff = max_backoff
        self._retention = retention
        self._retry = leader_retry_interval
        self._refresh = refresh_interval
        self._lock = LeaderLock(
            database_url,
            check_interval=leader_retry_interval,
            check_timeout=max(push_timeout, 1.0),
            lease_timeout=lease_timeout,
            lock_key=SSF_LOCK_KEY,
            lease_table="ssf_leader",
        )
        self._task: asyncio.Task[None] | None = None
        self.pushers: dict[str, tuple[Pusher, asyncio.Task[None]]] = {}
        self._refused: dict[str, str] = {}  # stream id -> the version that could not be run
        self.leading = False

    async def start(self) -> None:
        """Run in the background (for the app's lifespan)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="tokenlife-ssf-deliverer")

    async def stop(self) -> None:
        """Stop every stream's task and give up leadership."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """Stand by or lead until cancelled."""
        try:
            while True:
                try:
                    acquired = await self._lock.try_acquire()
                except _DB_ERRORS as exc:
                    log.warning("ssf: cannot reach the database for the leader lock: %r", exc)
                    acquired = False
                if acquired:
                    await self._lead()
                await asyncio.sleep(self._retry)
        finally:
            await self._lock.release()

    async def _lead(self) -> None:
        log.info("ssf: this instance delivers the push streams")
        self.leading = True
        pool = None
        tasks: list[asyncio.Task[None]] = []
        try:
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)
            tail = LogTail(pool, self._issuer, self._changed)
            await tail.start_at_head()
            tasks = [
                asyncio.create_task(tail.run(), name="tokenlife-ssf-tail"),
                asyncio.create_task(self._supervise(pool, tail), name="tokenlife-ssf-streams"),
                asyncio.create_task(self._lock.wait_lost(), name="tokenlife-ssf-lock"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    log.error("ssf: %s failed: %r", task.get_name(), task.exception())
            log.warning("ssf: stopped delivering (leadership lost or a task failed)")
        except _DB_ERRORS as exc:
            log.warning("ssf: database error while leading (%r); giving up leadership", exc)
        finally:
            self.leading = False
            for task in tasks:
                task.cancel()
            await self._stop_pushers(list(self.pushers))
            await asyncio.gather(*tasks, return_exceptions=True)
            if pool is not None:
                await pool.close()
            await self._lock.release()

    async def _supervise(self, pool: asyncpg.Pool, tail: LogTail) -> None:
        while True:
            try:
                async with pool.acquire() as conn:
                    wanted = {s.stream_id: s for s in await streams.push_streams(conn)}
            except _DB_ERRORS as exc:
                log.warning("ssf: reading the streams failed (%r)", exc)
                await asyncio.sleep(self._refresh)
                continue
            gone = [sid for sid, (p, _) in self.pushers.items() if wanted.get(sid) != p.stream]
            await self._stop_pushers(gone)
            for sid, stream in wanted.items():
                if sid not in self.pushers and self._refused.get(sid) != stream.version:
                    self._start(stream, pool, tail)
            await asyncio.sleep(self._refresh)

    def _start(self, stream: streams.PushStream, pool: asyncpg.Pool, tail: LogTail) -> None:
        # One stream that cannot be run (an endpoint stored before config.check refused its kind) is logged
        # once per version of it and left alone: it never stops the other streams.
        try:
            pusher = Pusher(
                stream,
                pool,
                tail,
                self._issuer,
                self._key,
                self._announce,
                timeout=self._push_timeout,
                max_backoff=self._max_backoff,
                retention=self._retention,
            )
        except Exception as exc:
            self._refused[stream.stream_id] = stream.version
            log.error("ssf: stream %s cannot be delivered: %r", stream.stream_id, exc)
            return
        self._refused.pop(stream.stream_id, None)
        task = asyncio.create_task(pusher.run(), name=f"tokenlife-ssf-push-{stream.stream_id}")
        self.pushers[stream.stream_id] = (pusher, task)

    async def _stop_pushers(self, stream_ids: list[str]) -> None:
        stopping = [self.pushers.pop(sid)[1] for sid in stream_ids if sid in self.pushers]
        for task in stopping:
            task.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)
