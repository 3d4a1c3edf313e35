"""What a worker measures about its own turn, for the operator's metrics.

A worker is a short-lived Job that Prometheus cannot scrape, so it puts what only it knows into its result
document (:class:`peerbot.result.TurnStats`): the time from the message that asked to its first progress
in the thread, tool calls and their durations by tool, retries by dependency, the circuit breakers that
opened, and the messages Slack rejected and that were re-sent as plain text. The operator reads every
result and exports these as ``peerbot_worker_*`` metrics (``docs/metrics.md``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peerbot.result import ToolUsage, TurnStats

if TYPE_CHECKING:
    from peerbot.worker.tools import ToolBox, ToolOutcome

#: Tool names are the model's; anything else is counted under this label (bounded label values).
OTHER_TOOL = "other"
KNOWN_TOOLS = frozenset({"bash", "str_replace_based_edit_tool"})


@dataclass
class TurnStatsCollector:
    """Collects a turn's statistics as it runs (see the module docstring)."""

    tools: dict[str, ToolUsage] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    slack_fallbacks: int = 0
    first_progress_seconds: float | None = None

    def tool(self, name: str, seconds: float) -> None:
        label = name if name in KNOWN_TOOLS else OTHER_TOOL
        usage = self.tools.setdefault(label, ToolUsage())
        usage.calls += 1
        usage.seconds = round(usage.seconds + seconds, 3)
        usage.max_seconds = round(max(usage.max_seconds, seconds), 3)

    def retry(self, dependency: str) -> None:
        self.retries[dependency] += 1

    def fallback(self, _reason: str = "") -> None:
        self.slack_fallbacks += 1

    def first_progress(self, requested_ts: str | None, now: float | None = None) -> None:
        """The first progress the person sees: seconds since the message that asked (a Slack timestamp)."""
        if self.first_progress_seconds is not None or not requested_ts:
            return
        try:
            asked = float(requested_ts)
        except ValueError:
            return
        self.first_progress_seconds = round(max(0.0, (now if now is not None else time.time()) - asked), 3)

    def result(self, *, duration_seconds: float, breakers_opened: Iterable[str]) -> TurnStats:
        return TurnStats(
            firstProgressSeconds=self.first_progress_seconds,
            durationSeconds=round(duration_seconds, 3),
            tools=dict(self.tools),
            retries=dict(self.retries),
            breakersOpened=sorted(breakers_opened),
            slackFallbacks=self.slack_fallbacks,
        )


def timed_toolbox(stats: TurnStatsCollector, **options: Any) -> ToolBox:
    """A :class:`~peerbot.worker.tools.ToolBox` whose every call is timed into ``stats``."""
    from peerbot.worker.tools import ToolBox

    class TimedToolBox(ToolBox):
        async def run(self, call: Any, *, time_left: float | None = None) -> ToolOutcome:
            started = time.monotonic()
            try:
                return await super().run(call, time_left=time_left)
            finally:
                stats.tool(str(call.get("name")), time.monotonic() - started)

    return TimedToolBox(**options)


__all__ = ["TurnStatsCollector", "timed_toolbox"]
