"""Small in-memory caches with a time to live and a size bound, for one dispatcher replica.

Used for deduplication (event ids, messages, button clicks, replayed signatures), user info (24 hours),
channel info and thread context (5 minutes). Bounded so that a flood of distinct keys cannot grow memory
without limit: past ``max_entries`` the oldest entries go first. The clock is injected for tests.

Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: The source documents' figures: user info for 24 hours, thread context for 5 minutes.
USER_INFO_TTL_SECONDS: Final = 24 * 60 * 60
THREAD_CONTEXT_TTL_SECONDS: Final = 5 * 60
#: Whether a channel is private changes rarely (converting a channel is an admin action); an hour keeps
#: conversations.info calls to a handful per channel a day.
CHANNEL_INFO_TTL_SECONDS: Final = 60 * 60
#: Slack retries an unacknowledged event after about 1 minute and then 5 minutes (docs.slack.dev, Events
#: API, "Retries"); 10 minutes covers all three retries with room to spare.
DEDUP_TTL_SECONDS: Final = 10 * 60
#: Enough for a busy workspace's 10 minutes of events, small enough to stay a few megabytes.
DEDUP_MAX_ENTRIES: Final = 100_000
#: People and threads one replica sees within the time to live.
INFO_MAX_ENTRIES: Final = 10_000


class TTLCache(Generic[K, V]):
    """A mapping whose entries expire ``ttl`` seconds after they were set, holding at most ``max_entries``."""

    def __init__(self, *, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError(
                f"a cache needs a positive ttl and room for one entry (ttl={ttl}, {max_entries})"
            )
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[key]

    def get(self, key: K) -> V | None:
        """The value for ``key``, or ``None`` when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def set(self, key: K, value: V) -> None:
        """Set ``key`` (its time to live starts again), evicting the oldest entries past the bound."""
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, value)
        self._expire()
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def add(self, key: K, value: V) -> bool:
        """Set ``key`` only if absent: ``True`` when this call added it (the first to see it)."""
        if self.get(key) is not None:
            return False
        self.set(key, value)
        return True

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
