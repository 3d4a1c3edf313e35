"""The agent loop of one turn: model step, tools, checkpoint, again, until Claude answers or time runs out.

Every model step and every tool result is checkpointed before the loop goes on, so a worker killed at
any moment loses at most the step in flight. The loop stops:

- when Claude answers without calling a tool (``answered``);
- at the turn's deadline (``paused``): before a model step or a tool call, or during one (a model step
  in flight is dropped and redone next turn; a command in flight is stopped and its result says so).
  Tool calls not run yet stay open in the history, and the next turn runs them first;
- when the tool-call limit of the turn is reached, Claude is told to answer without tools (``tool_choice``
  ``none``), which always ends the turn with an answer.

Before each model step the history is compacted when it would exceed the session's token budget: the
older steps are summarised by the (cheaper) summary model and replaced in the store, the recent ones kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from peerbot.logs import get_logger
from peerbot.session.format import CompactionSummary, Message, Step, ToolUseBlock
from peerbot.worker import history
from peerbot.worker.checkpoint import Checkpointer
from peerbot.worker.errors import ClaudeFailure
from peerbot.worker.model import Claude
from peerbot.worker.pricing import Accounting
from peerbot.worker.progress import Progress
from peerbot.worker.prompts import STOPPED_AT_DEADLINE_RESULT, SUMMARY_SYSTEM, TOOL_LIMIT_NOTE
from peerbot.worker.timing import Deadline
from peerbot.worker.tools import ToolBox

log = get_logger(__name__)

T = TypeVar("T")

#: Compaction keeps the newest steps worth this share of the token budget.
KEEP_SHARE: Final = 0.4


class DeadlineReached(Exception):
    """The turn's soft deadline passed while something was in flight."""


@dataclass
class AgentOutcome:
    """How the loop ended."""

    status: Literal["answered", "paused"]
    answer: str = ""
    stop_reason: str | None = None
    model_steps: int = 0
    tool_calls: int = 0
    changed_files: bool = False


@dataclass
class AgentState:
    """The history the loop works on: what is stored (after the summary), and where this turn began."""

    summary: CompactionSummary | None
    steps: list[Step]
    first_seq: int
    turn_start_seq: int
    tool_calls: int = 0
    last_prompt_tokens: int | None = None
    tokens_since_prompt: int = 0
    notes: list[str] = field(default_factory=list)


FaultHook = Callable[[str], None]


class Agent:
    """Runs the loop for one turn (see the module docstring)."""

    def __init__(
        self,
        *,
        claude: Claude,
        tools: ToolBox,
        checkpointer: Checkpointer,
        progress: Progress,
        deadline: Deadline,
        accounting: Accounting,
        system: str,
        state: AgentState,
        max_tool_calls: int,
        token_budget: int,
        fault: FaultHook = lambda point: None,
    ) -> None:
        self.claude = claude
        self.tools = tools
        self.checkpointer = checkpointer
        self.progress = progress
        self.deadline = deadline
        self.accounting = accounting
        self.system = system
        self.state = state
        self.max_tool_calls = max_tool_calls
        self.token_budget = token_budget
        self.fault = fault
        self.model_steps = 0
        self.changed = False
        self._limit_noted = False

    # --- recording --------------------------------------------------------------------------------------

    async def _record(self, step: Step, point: str) -> None:
        self.fault(f"{point}:before-checkpoint")
        self.state.steps.append(step)
        self.state.tokens_since_prompt += history.estimate_tokens(step)
        await self.checkpointer.record([step])
        self.fault(f"{point}:after-checkpoint")

    # --- tools ------------------------------------------------------------------------------------------

    async def run_tool_calls(self, calls: Sequence[ToolUseBlock | dict[str, Any]]) -> bool:
        """Run tool calls in order, checkpointing each result; ``False`` when the deadline stopped them."""
        for raw in calls:
            call = raw.model_dump(mode="json") if isinstance(raw, ToolUseBlock) else dict(raw)
            if self.deadline.reached:
                return False
            if self.state.tool_calls >= self.max_tool_calls:
                step = history.tool_result_step(
                    call["id"], TOOL_LIMIT_NOTE.format(limit=self.max_tool_calls), is_error=True
                )
                await self._record(step, "tool")
                continue
            description = ToolBox.describe(str(call.get("name")), call.get("input") or {})
            self.progress.doing(description)
            outcome = await self.tools.run(call, time_left=max(0.0, self.deadline.seconds_left()))
            self.state.tool_calls += 1
            self.changed = self.changed or outcome.changed
            block = dict(outcome.block)
            if outcome.stopped_by_deadline:
                block["content"] = f"{block.get('content', '')}\n{STOPPED_AT_DEADLINE_RESULT}"
                block["is_error"] = True
            self.fault("tool:ran")
            await self._record(
                Step(message=Message.model_validate({"role": "user", "content": [block]})), "tool"
            )
            self.progress.done(description)
            if outcome.stopped_by_deadline:
                return False
        return True

    # --- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> AgentOutcome:
        """Run until an answer or the deadline."""
        while True:
            if self.deadline.reached:
                return self._outcome("paused")
            await self._maybe_compact()
            limit_reached = self.state.tool_calls >= self.max_tool_calls
            if limit_reached and not self._limit_noted:
                await self._record(
                    history.user_text_step(TOOL_LIMIT_NOTE.format(limit=self.max_tool_calls)), "note"
                )
                self._limit_noted = True
            api = history.api_history(
                self.state.summary,
                self.state.steps,
                first_seq=self.state.first_seq,
                turn_start_seq=self.state.turn_start_seq,
            )
            messages = history.with_cache_breakpoints(api)
            self.progress.doing("thinking")
            try:
                step = await self._until_deadline(
                    self.claude.step(
                        system=self.system,
                        tools=self.tools.definitions(),
                        messages=messages,
                        tool_choice={"type": "none"} if limit_reached else None,
                        on_event=self._on_event,
                    )
                )
            except DeadlineReached:
                return self._outcome("paused")
            self.model_steps += 1
            self.accounting.add(step.model, step.usage)
            self.state.last_prompt_tokens = step.usage.input + step.usage.cache_read + step.usage.cache_write
            self.state.tokens_since_prompt = step.usage.output
            self.fault("model:returned")
            await self._record(Step(message=Message.model_validate(step.message), usage=step.usage), "model")
            calls = step.tool_uses
            if not calls:
                self.progress.done("wrote the answer")
                return self._outcome("answered", answer=step.text, stop_reason=step.stop_reason)
            if not await self.run_tool_calls(calls):
                return self._outcome("paused")

    def _outcome(self, status: Literal["answered", "paused"], **kwargs: Any) -> AgentOutcome:
        return AgentOutcome(
            status=status,
            model_steps=self.model_steps,
            tool_calls=self.state.tool_calls,
            changed_files=self.changed,
            **kwargs,
        )

    def _on_event(self, kind: str, detail: str) -> None:
        if kind == "text":
            self.progress.doing("writing")
        elif kind == "tool":
            self.progress.doing(f"preparing a {detail} call")

    async def _until_deadline(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(self.deadline.wait_reached())
        try:
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            waiter.cancel()
            raise
        if task in done:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise DeadlineReached

    # --- compaction -------------------------------------------------------------------------------------

    def context_tokens(self) -> int:
        """The history's size in tokens: the last prompt's own count plus estimates of what came since."""
        if self.state.last_prompt_tokens is not None:
            return self.state.last_prompt_tokens + self.state.tokens_since_prompt
        estimate = sum(history.estimate_tokens(step) for step in self.state.steps)
        if self.state.summary is not None:
            estimate += history.estimate_tokens(self.state.summary.text)
        return estimate + history.estimate_tokens(self.system)

    async def _maybe_compact(self) -> None:
        if self.context_tokens() <= self.token_budget:
            return
        state = self.state
        cut = history.choose_cut(state.steps, state.first_seq, int(self.token_budget * KEEP_SHARE))
        if cut is None or cut <= state.first_seq:
            return
        self.progress.doing("summarising older parts of the thread")
        dropped = state.steps[: cut - state.first_seq]
        try:
            text, usage = await self._until_deadline(
                self.claude.summarise(history.transcript(state.summary, dropped), SUMMARY_SYSTEM)
            )
        except (ClaudeFailure, DeadlineReached) as error:
            log.warning("compaction_skipped", error=str(error))
            return
        self.accounting.add(self.claude.summary_model, usage)
        await self.checkpointer.replace(summary=text, keep_from_seq=cut, usage=usage)
        compactions = state.summary.compactions + 1 if state.summary else 1
        state.summary = CompactionSummary(text=text, through_seq=cut, compactions=compactions, usage=usage)
        state.steps = state.steps[cut - state.first_seq :]
        state.first_seq = cut
        state.turn_start_seq = max(state.turn_start_seq, cut)
        state.last_prompt_tokens = None
        state.tokens_since_prompt = 0
        self.progress.done(f"summarised {len(dropped)} older steps")
        log.info("compacted", through_seq=cut, kept=len(state.steps))
