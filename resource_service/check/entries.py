"""Compact storage for live revocations: one dict slot, one small key and two array cells per entry.

A live revocation is the hot data of a resource instance (one per revoked token, session, user or key), so
its size is the memory of the service. What each entry costs, and why:
- The subject is stored as an int when it is a UUID in one of its two canonical spellings (32 lowercase hex
  digits, as jtis are issued, or the dashed form sessions use): 48 bytes instead of an 80-byte str. The
  spelling stays recoverable: hex is a non-negative int, dashed its bitwise complement. Any other subject
  stays a str. The mapping is injective, so a lookup can never match a different subject.
- The dict maps the key to its expiry, and expiries are shared float objects (one per distinct value in a
  bucket): tokens expire on whole seconds, so thousands of entries point at one float.
- For pruning and for the position of the last event that touched an entry, each entry is also one cell of
  a bucket (a list of keys and an array of positions) per whole second of expiry, instead of a heap of
  tuples: pruning pops whole buckets, oldest first.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterator

__all__ = ["ExpiringTable", "Key", "subject_key", "subject_text"]

Key = int | str


def subject_key(text: str) -> Key:
    """The compact, injective key of a subject (an int for canonical UUID spellings, else the str)."""
    size = len(text)
    if size == 32:
        try:
            value = int(text, 16)
        except ValueError:
            return text
        # int() also takes "0x", "_", signs and case: only the exact canonical spelling maps to an int.
        return value if format(value, "032x") == text else text
    if size == 36 and text[8] == "-" and text[13] == "-" and text[18] == "-" and text[23] == "-":
        digits = text[:8] + text[9:13] + text[14:18] + text[19:23] + text[24:]
        try:
            value = int(digits, 16)
        except ValueError:
            return text
        return ~value if format(value, "032x") == digits else text
    return text


def subject_text(key: Key) -> str:
    """The subject a key was made from (the inverse of subject_key)."""
    if isinstance(key, str):
        return key
    if key >= 0:
        return format(key, "032x")
    h = format(~key, "032x")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Bucket:
    """The entries whose expiry falls in one whole second, and the position each was touched at."""

    __slots__ = ("expiries", "keys", "positions")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.positions = array("q")
        self.expiries: dict[float, float] = {}  # interning: one float object per distinct expiry


class ExpiringTable:
    """Entries keyed by subject, each with an expiry that only ever widens, pruned in order of expiry."""

    __slots__ = ("_buckets", "_seconds", "expiry")

    def __init__(self) -> None:
        # Read directly by the per-request check: key -> expiry (seconds since the epoch).
        self.expiry: dict[Key, float] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._seconds: list[int] = []  # min-heap of bucket seconds

    def __len__(self) -> int:
        return len(self.expiry)

    def _bucket(self, second: int) -> _Bucket:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = _Bucket()
            heapq.heappush(self._seconds, second)
        return bucket

    def put(self, key: Key, expires: float, position: int) -> bool:
        """Record a revocation of key until `expires` at `position`; True when the expiry changed."""
        old = self.expiry.get(key)
        changed = old is None or expires > old
        if not changed:
            expires = old  # type: ignore[assignment]  # old is not None here
        bucket = self._bucket(math.ceil(expires))
        if changed:
            shared = bucket.expiries.get(expires)
            if shared is None:
                # A copy, not the caller's float: a survivor among a parsed snapshot's short-lived floats
                # would keep their whole memory pool resident.
                shared = bucket.expiries[expires] = expires + 0.0
            self.expiry[key] = expires = shared
        # An extended entry leaves its old cell behind in an earlier bucket; a cell counts only in the bucket
        # of the entry's current expiry, so stale cells are skipped (lazy deletion) and pruned with it.
        bucket.keys.append(key)
        bucket.positions.append(position)
        return changed

    def prune(self, limit: float) -> list[Key]:
        """Drop and return the keys whose expiry is before `limit`."""
        removed: list[Key] = []
        seconds = self._seconds
        expiry = self.expiry
        # Bucket s holds expiries in (s - 1, s]: while s - 1 < limit, some of its entries may be due.
        while seconds and seconds[0] - 1 < limit:
            second = heapq.heappop(seconds)
            bucket = self._buckets.pop(second)
            kept = _Bucket()
            for key, position in zip(bucket.keys, bucket.positions, strict=True):
                expires = expiry.get(key)
                if expires is None or math.ceil(expires) != second:
                    continue  # pruned already, or extended into a later bucket
                if expires < limit:
                    del expiry[key]
                    removed.append(key)
                else:
                    kept.keys.append(key)
                    kept.positions.append(position)
                    kept.expiries.setdefault(expires, expires)
            if kept.keys:
                # Only the bucket that straddles the limit keeps entries; every later one is not due yet.
                self._buckets[second] = kept
                heapq.heappush(seconds, second)
                break
        return removed

    def entries(self) -> Iterator[tuple[Key, float, int]]:
        """Every live entry as (key, expiry, position of the last event that touched it)."""
        expiry = self.expiry
        for second, bucket in self._buckets.items():
            latest: dict[Key, int] = {}
            for key, position in zip(bucket.keys, bucket.positions, strict=True):
                expires = expiry.get(key)
                if expires is not None and math.ceil(expires) == second:
                    latest[key] = max(latest.get(key, 0), position)
            for key, position in latest.items():
                yield key, expiry[key], position
