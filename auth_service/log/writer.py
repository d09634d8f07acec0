"""Group commit: one writer per process appends every request's revocations, many requests per transaction.

Why: each append serialises on the log's lock (store.py), so one transaction per logout caps the whole service
at one lock hand-over plus several round trips per logout. The writer instead takes whatever requests queued
while its previous batch committed, and writes them all in one transaction on its own asyncpg connection
(batch.py: the one-round-trip path and the locked path).

Right after COMMIT, before its requests are answered, it hands the events to its `on_commit` hooks: the
relay of the same process publishes them at once (relay/window.py), rather than after the NOTIFY and a read.
Before each batch it awaits `before_batch` (the relay's `keep_up`): a relay that trails its commits by more
than a window holds the next batch back a moment, so the writes never outrun what the process can publish.

Logins, refreshes and password changes are intents too (intents.py): what is slow about them (signing,
sealing, argon2) is done before they are queued, so the lock is held only for the batch's statements. The
writer records how long each batch held it (`lock_held`) and how many events it appended: the log's ceiling
is 1 / (lock-held time per event), and `recent()` gives both over the last few seconds for the metrics.

Each request awaits the commit of the batch that holds its intents. If the batch fails (lock timeout, lost
connection, any database error) every request in it gets an AppendError (503, Retry-After) and nothing of
any of them is committed: the failures that reach this point are the database's, not one request's (the
events are validated contract objects before they are queued), so retrying the others alone would mostly
fail again, later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from auth_service import contract as c
from auth_service.errors import AppendError, InvalidToken
from auth_service.log.batch import BatchCommitter
from auth_service.log.intents import Caller, Decision, Intent, Verdict

log = logging.getLogger("tokenlife.log")

MAX_BATCH = 500
# How often expired refresh-token successors are deleted (outside any batch: they are no part of the log).
PRUNE_EVERY = 5.0
# The window the recent lock-held and event figures cover.
RECENT = 10.0


class _Request:
    __slots__ = ("intents", "caller", "done")

    def __init__(
        self, intents: Sequence[Intent], caller: Caller | None, done: asyncio.Future[Decision]
    ) -> None:
        self.intents = intents
        self.caller = caller
        self.done = done


class LogWriter:
    """The process's one group committer: `submit()` queues intents and returns their committed events."""

    def __init__(
        self, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int, refresh_grace: float = 0.0
    ) -> None:
        self._committer = BatchCommitter(
            dsn,
            lock_timeout_ms=lock_timeout_ms,
            access_token_ttl=access_token_ttl,
            refresh_grace=refresh_grace,
        )
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches, for the benchmark's events-per-batch figure
        self.events = 0  # events appended
        self.lock_held = 0.0  # seconds the append lock was held, all batches together
        # (when, events, lock held, lock wait) per batch, for the last RECENT seconds
        self._recent: deque[tuple[float, int, float, float]] = deque()
        self._pruned = 0.0
        # Told, right after each COMMIT and before the requests are answered, the events it appended and
        # their recorded_at: the relay of the same process publishes them at once (relay/window.py).
        self.on_commit: list[Callable[[list[c.Event], datetime], None]] = []
        # Awaited before each batch is taken from the queue: the relay's keep_up (relay/window.py).
        self.before_batch: Callable[[], Awaitable[None]] | None = None

    @property
    def one_trip(self) -> bool:
        """Whether batches without a watermark take the one-round-trip path (the append function)."""
        return self._committer.one_trip

    @property
    def guesses_missed(self) -> int:
        """Batches the append function refused, decided again under the lock."""
        return self._committer.guesses_missed

    def recent(self) -> tuple[int, int, float]:
        """Over the last RECENT seconds: batches committed, events appended, seconds the lock was held."""
        self._forget(time.monotonic())
        return len(self._recent), sum(r[1] for r in self._recent), sum(r[2] for r in self._recent)

    def recent_lock_wait(self, quantile: float) -> float:
        """That quantile of the batches' waits for the append lock over the last RECENT seconds (0: none)."""
        self._forget(time.monotonic())
        waits = sorted(r[3] for r in self._recent)
        return waits[min(len(waits) - 1, int(quantile * len(waits)))] if waits else 0.0

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RECENT:
            self._recent.popleft()

    @classmethod
    @asynccontextmanager
    async def running(
        cls, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int, refresh_grace: float = 0.0
    ) -> AsyncIterator[LogWriter]:
        """A started writer, stopped (its connection closed) when the block ends."""
        writer = cls(
            dsn,
            lock_timeout_ms=lock_timeout_ms,
            access_token_ttl=access_token_ttl,
            refresh_grace=refresh_grace,
        )
        writer.start()
        try:
            yield writer
        finally:
            await writer.stop()

    def start(self) -> None:
        """Start the writer's task (it connects on its first batch)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="tokenlife-log-writer")

    async def stop(self) -> None:
        """Stop the task, fail whatever is still queued, and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.done.done():
                request.done.set_exception(AppendError("the log writer stopped"))
        await self._committer.close()

    async def submit(self, intents: Sequence[Intent], caller: Caller | None = None) -> list[c.Event]:
        """Append the events these intents call for, in one batch with others; returns them positioned.

        With a `caller`, its token is checked against the revocations under the lock, in the same round trip:
        InvalidToken, and nothing appended, if it is revoked by then."""
        decision = await self.decide(intents, caller)
        if decision.verdict is Verdict.CALLER_REVOKED:
            raise InvalidToken("token has been revoked")
        return decision.events

    async def decide(self, intents: Sequence[Intent], caller: Caller | None = None) -> Decision:
        """Queue intents for the next batch; returns how they were decided once that batch committed."""
        if self._task is None:
            raise AppendError("the log writer is not running")
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(intents, caller, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.before_batch is not None:
                try:
                    await self.before_batch()  # what queues meanwhile joins this batch
                except Exception:  # pacing is a courtesy: a failing hook must never stop the writes
                    log.exception("log writer: before_batch failed")
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [r for r in batch if not r.done.cancelled()]
            try:
                results, recorded = await self._committer.commit(live)
            except asyncio.CancelledError:
                for r in live:
                    if not r.done.done():
                        r.done.set_exception(AppendError("the log writer stopped"))
                raise
            except Exception as exc:
                error = exc if isinstance(exc, AppendError) else AppendError(f"append failed: {exc!r}")
                if error is not exc:
                    error.__cause__ = exc  # so the answer can tell a database outage from a busy log
                log.warning("log writer: a batch of %d requests failed: %s", len(live), error)
                for r in live:
                    if not r.done.done():
                        r.done.set_exception(error)
                continue
            self._count(results)
            self._hand_off(results, recorded)
            for r, outcome in zip(live, results, strict=True):
                if not r.done.done():
                    r.done.set_result(outcome)
            await self._prune()

    def _count(self, results: list[Decision]) -> None:
        events = sum(len(d.events) for d in results)
        held = self._committer.lock_held
        self.batches += 1
        self.events += events
        self.lock_held += held
        now = time.monotonic()
        self._recent.append((now, events, held, self._committer.lock_wait))
        self._forget(now)

    async def _prune(self) -> None:
        if time.monotonic() - self._pruned < PRUNE_EVERY:
            return
        self._pruned = time.monotonic()
        try:
            await self._committer.prune_successors()
        except Exception as exc:  # a later pass tries again; the batches do not depend on it
            log.warning("log writer: pruning expired refresh-token successors failed: %r", exc)

    def _hand_off(self, results: list[Decision], recorded: datetime | None) -> None:
        flat = [e for d in results for e in d.events]
        if not flat or recorded is None:
            return
        for hook in self.on_commit:
            try:
                hook(flat, recorded)
            except Exception:  # the commit stands whatever a hook does; the relay's read path still runs
                log.exception("log writer: an on_commit hook failed")
