"""The session's steps as the Messages API wants them, and the pure decisions about them.

Stored steps are one message each: a model response, one tool result, or the people's new messages. One
tool result per step is what lets the worker checkpoint after every tool; when the history is sent,
consecutive messages of the same role are merged (the API wants every ``tool_result`` of a ``tool_use``
at the start of the one next user message). Everything here is pure and tested without any server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from peerbot.session.format import CompactionSummary, Message, Step, ToolUseBlock, pending_tool_uses

#: Rough size of a token (English text and code average about four characters per token).
CHARS_PER_TOKEN: Final = 4
#: A tool result shown in a compaction transcript is cut to this many characters.
TRANSCRIPT_RESULT_CHARS: Final = 600
#: Text of one message in a compaction transcript is cut to this many characters.
TRANSCRIPT_TEXT_CHARS: Final = 4000
#: ``cache_control`` as the API takes it (5-minute cache, the default).
EPHEMERAL: Final = {"type": "ephemeral"}

SUMMARY_HEADER: Final = (
    "[Peerbot] Earlier parts of this thread were summarised to stay within the session's token budget. "
    "Summary of what happened before:\n\n"
)


@dataclass(frozen=True)
class ApiHistory:
    """The messages to send, and which of them ends the turns before this one (for a cache breakpoint)."""

    messages: list[dict[str, Any]]
    earlier_turns_end: int | None


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(block) for block in content]


def api_history(
    summary: CompactionSummary | None,
    steps: Sequence[Step],
    *,
    first_seq: int = 0,
    turn_start_seq: int | None = None,
) -> ApiHistory:
    """The Messages API ``messages``: the summary first (if any), then the steps, merged by role.

    ``turn_start_seq`` is the first step of the current turn; the message just before the one holding it
    is reported as ``earlier_turns_end``.
    """
    merged: list[dict[str, Any]] = []
    newest_seq: list[int] = []
    if summary is not None:
        merged.append({"role": "user", "content": [{"type": "text", "text": SUMMARY_HEADER + summary.text}]})
        newest_seq.append(first_seq - 1)
    for offset, step in enumerate(steps):
        seq = first_seq + offset
        message = step.message.to_api()
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1]["content"] = _blocks(merged[-1]["content"]) + _blocks(message["content"])
            newest_seq[-1] = seq
        else:
            merged.append({"role": message["role"], "content": _blocks(message["content"])})
            newest_seq.append(seq)
    earlier_end: int | None = None
    if turn_start_seq is not None:
        for index, seq in enumerate(newest_seq[:-1]):
            if seq < turn_start_seq:
                earlier_end = index
    return ApiHistory(merged, earlier_end)


def with_cache_breakpoints(history: ApiHistory) -> list[dict[str, Any]]:
    """A copy of the messages with ``cache_control`` on the end of earlier turns and on the last message.

    With the breakpoints on the tools and the system prompt that makes four, the API's maximum. The last
    one caches the whole prefix for the next step of this turn; the earlier-turns one keeps a cache hit
    for the next turn even when this turn's steps change.
    """
    messages = copy.deepcopy(history.messages)
    targets = {len(messages) - 1}
    if history.earlier_turns_end is not None:
        targets.add(history.earlier_turns_end)
    for index in targets:
        if 0 <= index < len(messages) and messages[index]["content"]:
            messages[index]["content"][-1]["cache_control"] = dict(EPHEMERAL)
    return messages


def open_tool_calls(steps: Sequence[Step]) -> list[ToolUseBlock]:
    """Tool calls of the history that have no result yet (a paused or interrupted turn's last step)."""
    return pending_tool_uses(steps)


def tool_result_step(tool_use_id: str, text: str, *, is_error: bool = False) -> Step:
    """A step holding one tool result."""
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": text or "(no output)",
    }
    if is_error:
        block["is_error"] = True
    return Step(message=Message.model_validate({"role": "user", "content": [block]}))


def user_text_step(text: str) -> Step:
    """A step holding a user message of text (people's messages, or a note from Peerbot)."""
    return Step(message=Message.model_validate({"role": "user", "content": [{"type": "text", "text": text}]}))


def final_answer(steps: Sequence[Step]) -> str | None:
    """The text of the last step when it is a finished assistant answer (no tool calls), else ``None``."""
    if not steps:
        return None
    last = steps[-1].message
    if last.role != "assistant" or last.tool_uses():
        return None
    return last.text


def estimate_tokens(value: Any) -> int:
    """A rough token count of a message, step or text (for budget decisions, not for billing)."""
    if isinstance(value, Step):
        value = value.message.to_api()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return max(1, len(text) // CHARS_PER_TOKEN)


def _cuttable(step: Step) -> bool:
    """A history may start at an assistant step, or at a user step that answers no tool call."""
    return step.message.role == "assistant" or not step.message.tool_results()


def choose_cut(steps: Sequence[Step], first_seq: int, keep_tokens: int) -> int | None:
    """Where to cut for compaction: the first kept step's sequence number, or ``None`` if no cut helps.

    Keeps the newest steps worth about ``keep_tokens``, moved forward to a step the history may start
    with (never between a tool call and its result). At least one step is summarised and one kept.
    """
    if len(steps) < 2:
        return None
    kept = 0
    index = len(steps)
    while index > 1 and kept + estimate_tokens(steps[index - 1]) <= keep_tokens:
        index -= 1
        kept += estimate_tokens(steps[index])
    index = max(index, 1)
    while index < len(steps) and not _cuttable(steps[index]):
        index += 1
    if index >= len(steps):
        # Nothing after the cut may start a history: cut before the last cuttable step instead.
        candidates = [i for i in range(1, len(steps)) if _cuttable(steps[i])]
        if not candidates:
            return None
        index = candidates[-1]
    return first_seq + index


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" […{len(text) - limit:,} characters cut]"


def transcript(summary: CompactionSummary | None, steps: Sequence[Step]) -> str:
    """A plain-text account of ``steps`` (after the previous summary) for the summary model to condense."""
    lines: list[str] = []
    if summary is not None:
        lines.append("Summary of what came before:\n" + summary.text)
    for step in steps:
        message = step.message
        for block in message.blocks:
            kind = getattr(block, "type", "")
            if kind == "text":
                speaker = "Claude" if message.role == "assistant" else "User"
                lines.append(f"{speaker}: {_clip(getattr(block, 'text', ''), TRANSCRIPT_TEXT_CHARS)}")
            elif kind == "tool_use":
                tool_input = json.dumps(getattr(block, "input", {}), ensure_ascii=False)
                lines.append(
                    f"Claude used {getattr(block, 'name', '?')}: {_clip(tool_input, TRANSCRIPT_TEXT_CHARS)}"
                )
            elif kind == "tool_result":
                content = getattr(block, "content", "")
                text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                lines.append(f"Tool result: {_clip(text or '', TRANSCRIPT_RESULT_CHARS)}")
    return "\n\n".join(lines)
