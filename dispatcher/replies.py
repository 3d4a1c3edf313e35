"""What the dispatcher says in Slack, as pure functions returning ``{"text", "blocks"}`` messages.

Each message says what happened and what to do next, reads well as notification text alone, and passes
:func:`peerbot.slack_messages.check_message`. Free text from outside (error details, repository values) is
escaped and clipped. The status message carries a Stop button whose value is the Conversation's name.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

from peerbot import constants
from peerbot.conversation import Phase
from peerbot.dispatcher.rules import Refusal
from peerbot.slack.builders import one_line
from peerbot.slack_messages import (
    ACTION_STOP,
    button,
    context,
    error_message,
    format_duration,
    format_tokens,
    help_message,
    section,
)

#: The issue's wording for a new request's status message, which the worker then edits in place.
QUEUED_TEXT: Final = "Queued: starting a worker…"
#: For a follow-up that arrives while a turn is still running in the thread.
QUEUED_BEHIND_TEXT: Final = "Queued: I'll start on this as soon as the current turn ends…"
#: Room for an error's technical detail in a reply: enough to recognise it, short enough to glance at.
DETAIL_LIMIT: Final = 300

_REFUSALS: Final[dict[Refusal, tuple[str, str]]] = {
    Refusal.DIRECT_MESSAGES_OFF: (
        "I don't take requests in direct messages in this workspace.",
        "Mention me in a channel I'm in instead.",
    ),
    Refusal.PRIVATE_CHANNEL: (
        "I don't work in private channels in this workspace.",
        "Mention me in a public channel, or ask an administrator to set ALLOW_PRIVATE_CHANNELS.",
    ),
    Refusal.CHANNEL_NOT_ALLOWED: (
        "I'm not enabled in this channel.",
        "Ask in one of the channels I'm enabled in, or ask an administrator to add this one "
        "to ALLOWED_CHANNELS.",
    ),
    Refusal.USER_NOT_ALLOWED: (
        "Sorry, I can only take requests from people on my allow-list.",
        "Ask a Peerbot administrator to add you to ALLOWED_USERS.",
    ),
}


def _note(emoji: str, text: str) -> dict[str, Any]:
    """A one-paragraph message: the same words as text and as one section."""
    return {"text": f"{emoji} {text}", "blocks": [section(f"{emoji} {text}")]}


def queued_message(conversation: str, *, behind_running_turn: bool = False, files: int = 0) -> dict[str, Any]:
    """The status message posted at once for a recorded request, with a Stop button (edited later).

    ``files`` attached to the request are mentioned, so the person knows they were noted.
    """
    label = QUEUED_BEHIND_TEXT if behind_running_turn else QUEUED_TEXT
    blocks = [section(f"🕒 *{label}*")]
    text = f"🕒 {label}"
    if files:
        noted = f"📎 {files} attached file{'s' if files != 1 else ''} noted for this request."
        blocks.append(context(noted))
        text += f" {noted}"
    blocks.append(
        {"type": "actions", "elements": [button("Stop", ACTION_STOP, conversation, style="danger")]}
    )
    return {"text": text, "blocks": blocks}


def help_reply(*, trigger_phrase: str, timeout_minutes: int, organization: str) -> dict[str, Any]:
    """How to use Peerbot, plus the in-thread commands the dispatcher understands."""
    message = help_message(
        trigger_phrase=trigger_phrase, timeout_minutes=timeout_minutes, organization=organization
    )
    commands = (
        "*In a thread:* `stop` cancels the current work · `status` shows where it stands · "
        "`help` shows this · `repo=owner/name` picks the repository"
    )
    return {"text": message["text"], "blocks": [*message["blocks"], context(commands)]}


def rate_limited(retry_after_seconds: float, limit_per_minute: int) -> dict[str, Any]:
    """Friendly: how many requests a minute, and when to try again."""
    wait = format_duration(max(1, math.ceil(retry_after_seconds)))
    return _note(
        "⏳",
        f"You've sent {limit_per_minute} requests in the last minute, which is my limit per person. "
        f"Please try again in {wait}; I haven't recorded this one.",
    )


def maintenance() -> dict[str, Any]:
    return _note(
        "🛠️",
        "I'm down for maintenance right now and can't take new requests. "
        "Please try again later; `stop` and `status` still work in existing threads.",
    )


def refused(why: Refusal) -> dict[str, Any]:
    what, todo = _REFUSALS[why]
    return _note("🙅", f"{what} {todo}")


def record_failed(detail: str) -> dict[str, Any]:
    """The durable write failed or timed out: never silent."""
    return error_message(
        "I could not record your request: " + one_line(detail, DETAIL_LIMIT),
        "Please try again in a minute. If it keeps happening, tell a Peerbot administrator.",
    )


def bad_repository(value: str) -> dict[str, Any]:
    shown = one_line(value, 120)
    return error_message(
        f"“{shown}” is not a GitHub repository name, so I haven't started.",
        "Write it as repo=owner/name (for example repo=octocat/hello-world) and send your request again.",
    )


def too_long(length: int) -> dict[str, Any]:
    """A message past Slack's 40,000 characters: recorded, and the person told what will be read."""
    limit = constants.SLACK_MAX_MESSAGE_TEXT
    return _note(
        "✂️",
        f"Your message is {length:,} characters long; Slack keeps only the first {limit:,}, so I'll work "
        "from those. For longer text, attach it as a file.",
    )


def no_conversation() -> dict[str, Any]:
    return _note(
        "🤷", "There is no request in this thread yet. Mention me with what you want done to start one."
    )


def nothing_to_stop() -> dict[str, Any]:
    return _note("🤷", "Nothing is running in this thread, so there is nothing to stop.")


def stopping(user: str) -> dict[str, Any]:
    return _note("🛑", f"Stopping, as <@{user}> asked. Work up to the last completed step is kept.")


def continuing(user: str) -> dict[str, Any]:
    return _note("▶️", f"Continuing, as <@{user}> asked.")


def cannot_continue(phase: str | None) -> dict[str, Any]:
    if phase in (Phase.RUNNING, Phase.QUEUED, Phase.PENDING):
        return _note("⚙️", "I'm already working in this thread; there is nothing to continue yet.")
    return _note("🤷", "This pause has already been picked up. Reply in the thread to ask for more work.")


def action_failed(detail: str) -> dict[str, Any]:
    return error_message(
        "I could not record that: " + one_line(detail, DETAIL_LIMIT),
        "Please try again in a minute. If it keeps happening, tell a Peerbot administrator.",
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def status_reply(conversation: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``status``: the phase, the Job, the elapsed time, turns and tokens of the thread's Conversation."""
    status = conversation.get("status") or {}
    phase = str(status.get("phase") or Phase.PENDING.value)
    lines = [f"*Phase:* {one_line(phase, 40)}"]
    if status.get("queuePosition"):
        lines[0] += f" (position {status['queuePosition']} in the queue)"
    job = status.get("job")
    if isinstance(job, str) and job:
        lines.append(f"*Job:* `{one_line(job, 80)}`")
    started = _parse_time(status.get("startedAt"))
    finished = _parse_time(status.get("finishedAt"))
    created = _parse_time((conversation.get("metadata") or {}).get("creationTimestamp"))
    if phase == Phase.RUNNING and started is not None:
        lines.append(f"*Elapsed:* {format_duration((now - started).total_seconds())}")
    elif started is not None and finished is not None and finished >= started:
        lines.append(f"*Last turn took:* {format_duration((finished - started).total_seconds())}")
    elif created is not None:
        lines.append(f"*Waiting for:* {format_duration((now - created).total_seconds())}")
    turns = status.get("turns")
    tokens = (status.get("tokens") or {}).get("total")
    summary = []
    if isinstance(turns, int):
        summary.append(f"{turns} turn{'s' if turns != 1 else ''}")
    if isinstance(tokens, int) and tokens:
        summary.append(f"{format_tokens(tokens)} tokens")
    if summary:
        lines.append("*So far:* " + ", ".join(summary))
    error = status.get("error")
    if isinstance(error, str) and error and phase in (Phase.FAILED, Phase.TIMED_OUT):
        lines.append(f"*Last error:* {one_line(error, DETAIL_LIMIT)}")
    pull_request = status.get("pullRequest")
    if isinstance(pull_request, str) and pull_request.startswith("https://"):
        lines.append(f"*Pull request:* <{pull_request}|{one_line(pull_request, 100)}>")
    text = "📋 " + " · ".join(line.replace("*", "") for line in lines)
    return {"text": text, "blocks": [section("📋 " + "\n".join(lines))]}
