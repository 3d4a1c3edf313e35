"""Progress in the Slack thread while a turn runs: one status message edited in place, and reactions.

The status message (the one the dispatcher posted, or a new one) shows the current phase ("restoring the
session", "cloning", "thinking", "running `pytest -q`", "editing app.py", "pushing"), a checklist of the
steps done, the time elapsed and the time left, and a Stop button. Edits are coalesced: at most one every
:data:`peerbot.constants.SLACK_STATUS_EDIT_INTERVAL_SECONDS`, whatever the agent does, plus one every
:data:`HEARTBEAT_SECONDS` so the clock in it moves. The reaction on the triggering message says where the
turn stands: ⚙️ working, then ✅ done, ❌ failed or ⏳ paused.

Slack failing here never fails the turn: progress is a courtesy, the answer is what matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from peerbot import constants
from peerbot.conversation import Phase
from peerbot.logs import get_logger
from peerbot.planner import Reaction
from peerbot.worker.slack_io import SlackThread, slack_error
from peerbot.worker.timing import Deadline

log = get_logger(__name__)

#: Without any change, the status message is still refreshed this often so its clock moves.
HEARTBEAT_SECONDS: Final = 15.0
#: Errors that mean the status message cannot be edited (gone, or not ours): post a new one instead.
REPOST_ERRORS: Final = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})


class Progress:
    """The status message and reactions of one turn.

    Args:
        thread: the Slack thread.
        deadline: the turn's deadline (elapsed and time left come from it).
        conversation: the Conversation's name, carried by the Stop button.
        status_ts: the status message to edit; a new one is posted when ``None``.
        reaction_ts: the message the reactions go on (the newest request).
        interval: the shortest time between two edits.
    """

    def __init__(
        self,
        thread: SlackThread,
        deadline: Deadline,
        *,
        conversation: str,
        status_ts: str | None,
        reaction_ts: str | None,
        interval: float = constants.SLACK_STATUS_EDIT_INTERVAL_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        updates: bool = True,
        reactions: bool = True,
    ) -> None:
        #: ENABLE_PROGRESS_UPDATES: without it no status message is posted or edited.
        self.updates = updates
        #: ENABLE_STATUS_REACTIONS: without it no reaction is added or removed.
        self.reactions = reactions
        self.thread = thread
        self.deadline = deadline
        self.conversation = conversation
        self.status_ts = status_ts
        self.reaction_ts = reaction_ts
        self.interval = interval
        self.heartbeat = heartbeat
        self.current: str | None = "starting"
        self.steps_done: list[str] = []
        #: Reactions an earlier turn left (⏳ or ❌ before a Continue), by message: removed at the end.
        self.stale_reactions: dict[str, set[str]] = {}
        self.edits = 0
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._published: tuple[str | None, int] | None = None

    async def start(self, current: str) -> None:
        """Show the first state at once (the person sees Peerbot at work), react ⚙️, start the updater."""
        self.current = current
        await self._publish()
        if self.reaction_ts and self.reactions:
            await self.thread.react(self.reaction_ts, Reaction.WORKING.value)
        if self.updates:
            self._task = asyncio.create_task(self._run(), name="peerbot-progress")

    def doing(self, current: str) -> None:
        """What the turn is doing now (shown on the next edit)."""
        if current != self.current:
            self.current = current
            self._dirty.set()

    def done(self, step: str) -> None:
        """Add a finished step to the checklist."""
        self.steps_done.append(step)
        self._dirty.set()

    async def finish(self, phase: Phase, summary: str | None = None) -> None:
        """Stop updating; leave the status message in its final state and swap the reaction."""
        await self.stop()
        if summary:
            self.steps_done.append(summary)
        self.current = None
        await self._publish(phase=phase, final=True)
        if not self.reactions:
            return
        if self.reaction_ts:
            final = {Phase.SUCCEEDED: Reaction.DONE, Phase.TIMED_OUT: Reaction.PAUSED}.get(
                phase, Reaction.FAILED
            )
            stale = self.stale_reactions.get(self.reaction_ts, set())
            for name in sorted({Reaction.WORKING.value} | (stale - {final.value})):
                await self.thread.react(self.reaction_ts, name, remove=True)
            await self.thread.react(self.reaction_ts, final.value)
        for ts, names in self.stale_reactions.items():
            if ts != self.reaction_ts:
                for name in sorted(names):
                    await self.thread.react(ts, name, remove=True)

    async def stop(self) -> None:
        """Stop the background updater (no final edit)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await self._dirty.wait()
            wait = last + self.interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the edit rate limit, not synchronisation
            self._dirty.clear()
            await self._publish()
            last = loop.time()

    async def _publish(self, *, phase: Phase = Phase.RUNNING, final: bool = False) -> None:
        from peerbot.slack_messages import StatusView, status_message

        if not self.updates:
            return
        view = StatusView(
            phase=phase,
            steps_done=tuple(self.steps_done),
            current_step=self.current,
            elapsed_seconds=self.deadline.elapsed(),
            time_left_seconds=None if final else max(0.0, self.deadline.seconds_left()),
            conversation=None if final else self.conversation,
        )
        message = status_message(view)
        try:
            if self.status_ts is not None:
                try:
                    await self.thread.update(self.status_ts, message)
                    self.edits += 1
                    return
                except Exception as error:
                    if slack_error(error) not in REPOST_ERRORS:
                        raise
                    log.info("status_message_gone", ts=self.status_ts, error=slack_error(error))
            self.status_ts = await self.thread.post(message)
            self.edits += 1
        except Exception as error:
            log.warning("status_update_failed", error=slack_error(error) or str(error))
