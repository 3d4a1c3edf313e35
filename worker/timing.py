"""Time for one turn: a clock that tests can move, and the deadline the worker pauses before.

The Job gives the worker its hard deadline (``PEERBOT_DEADLINE``, when Kubernetes stops the pod). The
worker stops the agent :attr:`Deadline.margin` earlier, so that checkpointing, pushing work in progress
and telling the person fit before the hard stop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the worker reads the time (wall clock, UTC)."""

    def now(self) -> datetime:
        """The current time, timezone-aware, UTC."""
        ...

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the time jumps (never, for a real clock)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """A real clock never jumps."""


class ManualClock:
    """Real time plus an offset that tests move forward with :meth:`advance` (thread-safe)."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + offset

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` forward and tell every subscriber (from any thread)."""
        with self._lock:
            self._offset += timedelta(seconds=seconds)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)


class Deadline:
    """The moment the agent must stop (the hard deadline minus a margin), read from a :class:`Clock`."""

    def __init__(self, clock: Clock, hard: datetime, margin_seconds: float) -> None:
        self.clock = clock
        self.hard = hard
        self.margin = timedelta(seconds=margin_seconds)
        self.started = clock.now()
        self._nudges: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()
        clock.subscribe(self._nudge_all)

    @property
    def soft(self) -> datetime:
        """When the agent stops to pause."""
        return self.hard - self.margin

    def seconds_left(self) -> float:
        """Seconds until the agent must stop (negative once past)."""
        return (self.soft - self.clock.now()).total_seconds()

    def hard_seconds_left(self) -> float:
        """Seconds until the pod is stopped."""
        return (self.hard - self.clock.now()).total_seconds()

    def elapsed(self) -> float:
        """Seconds since the turn started."""
        return (self.clock.now() - self.started).total_seconds()

    @property
    def reached(self) -> bool:
        return self.seconds_left() <= 0

    async def wait_reached(self) -> None:
        """Return once the soft deadline has passed (woken early when a test clock jumps)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            self._nudges.append((loop, event))
        try:
            while True:
                left = self.seconds_left()
                if left <= 0:
                    return
                event.clear()
                try:
                    async with asyncio.timeout(left):
                        await event.wait()
                except TimeoutError:
                    continue
        finally:
            with self._lock:
                self._nudges.remove((loop, event))

    def _nudge_all(self) -> None:
        with self._lock:
            nudges = list(self._nudges)
        for loop, event in nudges:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
