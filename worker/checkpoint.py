"""Checkpointing the session: every model step and every tool result is appended before the turn goes on.

:class:`Checkpointer` wraps a :class:`~peerbot.session.store.SessionStore` for one thread:

- **Ordered, one write at a time.** Writes run in a worker thread, one after another; steps recorded while
  a write is in flight are written by the next one (so a slow store batches, never reorders).
- **Nothing lost, nothing doubled.** :meth:`record` waits for the write (up to :data:`WAIT_SECONDS`) so a
  worker killed afterwards has the step saved; a step in flight is at most redone. If the store fails,
  the steps stay pending and go with the next write; the turn goes on and the person is told at the end
  if they could never be saved. A write whose answer was lost (it landed, but the call failed) is
  recognised on the next attempt and not written twice.
- **A second writer fails loudly.** Every write carries the generation the worker loaded; a
  :class:`~peerbot.session.store.StaleSessionError` that is not our own lost write ends the turn with a
  :class:`~peerbot.worker.errors.StorageFailure` (another worker owns the thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from peerbot.logs import get_logger
from peerbot.result import ErrorKind
from peerbot.session.format import SessionChanges, SessionKey, Step, TokenUsage
from peerbot.session.store import SessionStore, StaleSessionError
from peerbot.worker.errors import StorageFailure

log = get_logger(__name__)

#: How long a step waits for its checkpoint before the turn goes on without it (it stays pending).
WAIT_SECONDS: Final = 20.0
#: Delays between the last attempts to save pending steps when the turn ends.
FINAL_RETRY_DELAYS: Final = (1.0, 2.0, 4.0)


def _merge(old: SessionChanges | None, new: SessionChanges | None) -> SessionChanges | None:
    if old is None:
        return new
    if new is None:
        return old
    return SessionChanges(**{**old.updates(), **new.updates()})


class Checkpointer:
    """Appends a thread's steps to its session, in order, one write at a time (see the module docstring).

    Args:
        store: the session store (sync; called in a worker thread).
        key: the thread.
        generation: the generation the worker loaded (0: no session yet).
        next_seq: the sequence number the next step gets.
    """

    def __init__(
        self,
        store: SessionStore,
        key: SessionKey,
        *,
        generation: int,
        next_seq: int,
        wait_seconds: float = WAIT_SECONDS,
        final_retry_delays: Sequence[float] = FINAL_RETRY_DELAYS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.key = key
        self.generation = generation
        self.next_seq = next_seq
        self.wait_seconds = wait_seconds
        self.final_retry_delays = tuple(final_retry_delays)
        self.sleep = sleep
        self.pending: list[Step] = []
        self.pending_changes: SessionChanges | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.writes = 0
        self._task: asyncio.Task[None] | None = None
        self._maybe_landed = False
        self.last_attempt_failed = False

    @property
    def saved_seq(self) -> int:
        """Steps with a sequence number below this are stored."""
        return self.next_seq

    @property
    def healthy(self) -> bool:
        """No step is waiting to be saved."""
        return not self.pending and self.pending_changes is None

    async def record(self, steps: Sequence[Step], changes: SessionChanges | None = None) -> bool:
        """Queue ``steps`` (and head ``changes``) and wait for them to be saved; ``False`` if not yet."""
        self.pending.extend(steps)
        self.pending_changes = _merge(self.pending_changes, changes)
        return await self.flush(self.wait_seconds)

    async def flush(self, within: float | None = None) -> bool:
        """Write whatever is pending; ``True`` once nothing is. Raises :class:`StorageFailure` on a conflict.

        Returns ``False`` when the store failed (the steps stay pending) or ``within`` seconds passed (the
        write goes on in the background and the next flush waits for it first).
        """
        loop = asyncio.get_running_loop()
        until = None if within is None else loop.time() + within
        while not self.healthy:
            if self._task is None or self._task.done():
                if self._task is not None:
                    self._task.result()  # a write that ended in a conflict raises it again here
                self._task = asyncio.create_task(self._write())
            remaining = None if until is None else max(0.0, until - loop.time())
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(self._task)
            except TimeoutError:
                return False
            if self.last_attempt_failed:
                return False
        return True

    async def finish(self) -> bool:
        """Last attempts to save everything pending before the turn ends; ``True`` when all is saved."""
        if await self.flush(self.wait_seconds):
            return True
        for delay in self.final_retry_delays:
            await self.sleep(delay)
            if await self.flush(self.wait_seconds):
                return True
        return False

    async def replace(
        self, *, summary: str, keep_from_seq: int, usage: TokenUsage, changes: SessionChanges | None = None
    ) -> None:
        """Compact the stored history (after saving what is pending). Raises if it cannot."""
        if not await self.flush(self.wait_seconds):
            raise StorageFailure(
                ErrorKind.STORAGE,
                "I could not save the conversation before summarising it.",
                "Reply in this thread in a few minutes to try again.",
                detail=self.last_error,
            )
        try:
            self.generation = await asyncio.to_thread(
                lambda: self.store.replace(
                    self.key,
                    expected_generation=self.generation,
                    summary=summary,
                    keep_from_seq=keep_from_seq,
                    usage=usage,
                    changes=changes,
                )
            )
        except StaleSessionError as error:
            raise _conflict(error) from error
        self.writes += 1

    async def _write(self) -> None:
        batch = list(self.pending)
        changes = self.pending_changes
        if self._maybe_landed:
            batch, changes = await self._skip_landed(batch, changes)
            if not batch and changes is None:
                self.last_attempt_failed = False
                return
        try:
            generation = await asyncio.to_thread(
                self.store.append, self.key, batch, expected_generation=self.generation, changes=changes
            )
        except StaleSessionError as error:
            if self.writes == 0 and not self._maybe_landed:
                raise _conflict(error) from error
            # A previous write may have landed with its answer lost: check once more, then call it a conflict.
            self._maybe_landed = True
            batch, changes = await self._skip_landed(batch, changes)
            try:
                generation = await asyncio.to_thread(
                    self.store.append, self.key, batch, expected_generation=self.generation, changes=changes
                )
            except StaleSessionError as again:
                raise _conflict(again) from again
        except Exception as error:
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self.last_attempt_failed = True
            self._maybe_landed = True
            log.warning("checkpoint_failed", error=self.last_error, pending=len(self.pending))
            return
        self._maybe_landed = False
        self.last_attempt_failed = False
        self.generation = generation
        self.writes += 1
        self.next_seq += len(batch)
        del self.pending[: len(batch)]
        if self.pending_changes is changes:
            self.pending_changes = None

    async def _skip_landed(
        self, batch: list[Step], changes: SessionChanges | None
    ) -> tuple[list[Step], SessionChanges | None]:
        """After an unclear failure: drop the steps that did land (same messages at the same sequence)."""
        session = await asyncio.to_thread(self.store.load, self.key)
        stored_generation = session.generation if session is not None else 0
        if session is None or stored_generation == self.generation:
            self._maybe_landed = False
            return batch, changes
        landed = session.next_seq - self.next_seq
        stored_tail = session.steps[len(session.steps) - landed :] if landed > 0 else ()
        if 0 < landed <= len(batch) and [s.message for s in stored_tail] == [
            s.message for s in batch[:landed]
        ]:
            log.info("checkpoint_recovered", steps=landed)
            self.generation = stored_generation
            self.next_seq += landed
            del self.pending[:landed]
            self._maybe_landed = False
            return batch[landed:], changes
        if (
            landed == 0
            and changes is not None
            and session.head.model_copy(update=changes.updates()) == session.head
        ):
            self.generation = stored_generation
            self._maybe_landed = False
            return batch, None
        raise _conflict(StaleSessionError(self.key, self.generation, stored_generation))


def _conflict(error: StaleSessionError) -> StorageFailure:
    return StorageFailure(
        ErrorKind.STORAGE,
        "Another Peerbot worker changed this thread's saved session while I was working, so I stopped "
        "rather than overwrite its work.",
        "Wait for the other turn to finish, then reply in this thread to continue.",
        detail=str(error),
    )
