"""The per-user rate limit, on the ``limits`` library: in memory on one replica, Redis across replicas.

A moving window of one minute per Slack user: ``RATE_LIMIT_PER_MINUTE`` requests (default 10), or
``TRUSTED_RATE_LIMIT_PER_MINUTE`` for the users listed in ``TRUSTED_USERS``. With ``REDIS_URL`` set the
counts live in Redis, so the limit holds however many dispatcher replicas Slack's events are spread over.
Only requests that would start work count; ``stop``, ``status`` and ``help`` never do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

#: Keys in Redis are shared with anything else using the same database; this keeps ours apart.
KEY_PREFIX: Final = "peerbot-dispatcher"


class RateLimitUnavailable(Exception):
    """The rate limit store cannot be used; the message says what to install or fix."""


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go ahead, and if not, when the person may try again."""

    allowed: bool
    limit: int
    retry_after_seconds: float = 0.0


class RateLimiter:
    """Per-user limits. Create it inside the running event loop (the in-memory store schedules a task)."""

    def __init__(
        self,
        *,
        per_minute: int,
        trusted_per_minute: int,
        trusted_users: frozenset[str] = frozenset(),
        redis_url: str | None = None,
    ) -> None:
        if per_minute < 1 or trusted_per_minute < 1:
            raise ValueError("rate limits must allow at least one request a minute")
        self.per_minute = per_minute
        self.trusted_per_minute = trusted_per_minute
        self.trusted_users = trusted_users
        self.storage = _storage(redis_url)
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._items = {
            False: RateLimitItemPerMinute(per_minute),
            True: RateLimitItemPerMinute(trusted_per_minute),
        }

    def limit_for(self, user: str) -> int:
        return self.trusted_per_minute if user in self.trusted_users else self.per_minute

    async def hit(self, user: str) -> Verdict:
        """Count one request by ``user``; refused when the last minute already holds the limit."""
        item = self._items[user in self.trusted_users]
        if await self._limiter.hit(item, KEY_PREFIX, user):
            return Verdict(True, item.amount)
        stats = await self._limiter.get_window_stats(item, KEY_PREFIX, user)
        return Verdict(False, item.amount, max(1.0, stats.reset_time - time.time()))


def _storage(redis_url: str | None) -> Storage:
    if not redis_url:
        return MemoryStorage()
    scheme = redis_url.split("://", 1)[0]
    if scheme not in ("redis", "rediss", "redis+unix", "valkey", "valkeys"):
        raise RateLimitUnavailable(
            f"REDIS_URL must start with redis://, rediss:// or redis+unix:// (got {scheme}://)"
        )
    try:
        storage = storage_from_string(f"async+{redis_url}", implementation="redispy", key_prefix=KEY_PREFIX)
    except ConfigurationError as error:
        raise RateLimitUnavailable(
            f"REDIS_URL is set but the Redis client is not installed ({error}): install the `redis` "
            "package (pip install redis), or unset REDIS_URL to count requests in memory on each replica"
        ) from None
    if not isinstance(storage, Storage):
        raise RateLimitUnavailable(f"REDIS_URL {scheme}:// did not give an asyncio storage")
    return storage
