"""Whole Slack messages Peerbot posts, as pure functions from plain data to ``{"text", "blocks"}`` dicts.

Every message carries a ``text`` that reads well on its own (notifications and screen readers use it) and
passes :func:`peerbot.slack.limits.check_message`. Free text handed in (step names, error details, link
labels) is escaped and clipped, so no input can push a message past Slack's limits. Buttons carry only a
conversation name as their value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from peerbot import constants
from peerbot.conversation import Phase
from peerbot.slack.limits import (
    SLACK_MAX_BLOCKS_TEXT,
    block_cost,
    clip,
    escape,
    plain_to_mrkdwn,
    slack_length,
)
from peerbot.slack.mrkdwn import ZERO_WIDTH_SPACE, ContentBlock, markdown_to_blocks

#: The Stop button on the status message; its value is the conversation name.
ACTION_STOP: Final = "peerbot_stop"
#: The Continue button on the "paused at the time limit" message; its value is the conversation name.
ACTION_CONTINUE: Final = "peerbot_continue"
#: More than ten messages for one answer floods the thread; the rest goes to a file (or the pull request).
DEFAULT_MAX_MESSAGES: Final = 10
#: The status message lists this many finished steps; older ones are counted, not listed.
STATUS_STEPS_SHOWN: Final = 6
#: A step, error summary or link label longer than this is clipped: the status message is a glance.
STEP_TEXT_LIMIT: Final = 200
#: Room given to "what happened" and "what to do" in an error message.
ERROR_TEXT_LIMIT: Final = 1000
#: Room given to an error's technical detail (shown as code).
ERROR_DETAIL_LIMIT: Final = 2000
#: Where the rest of a truncated answer is, unless the caller says otherwise.
DEFAULT_OVERFLOW_LOCATION: Final = "the attached file"

_PHASES: Final[dict[str, tuple[str, str]]] = {
    Phase.PENDING: ("👀", "Starting"),
    Phase.QUEUED: ("🕒", "Queued behind the previous request in this thread"),
    Phase.RUNNING: ("⚙️", "Working"),
    Phase.WAITING: ("💬", "Done; reply in this thread to continue"),
    Phase.SUCCEEDED: ("✅", "Done"),
    Phase.FAILED: ("❌", "Failed"),
    Phase.TIMED_OUT: ("⏳", "Paused at the time limit"),
    Phase.CANCELLED: ("🛑", "Stopped"),
}


@dataclass(frozen=True)
class Link:
    """A link to show: its label and where it goes (only http(s) URLs become links)."""

    text: str
    url: str


@dataclass(frozen=True)
class AnswerFooter:
    """What a turn cost and produced, shown under the final answer."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    duration_seconds: float | None = None
    branch: Link | None = None
    pull_request: Link | None = None


@dataclass(frozen=True)
class RenderedAnswer:
    """An answer as Slack messages, and what did not fit in them.

    ``overflow`` is the Markdown not shown (empty unless ``truncated``), ready to upload as a file;
    ``overflow_characters`` counts it as the notice in the last message does.
    """

    messages: list[dict[str, Any]]
    truncated: bool = False
    overflow: str = ""
    overflow_characters: int = 0


@dataclass(frozen=True)
class StatusView:
    """What the status message shows while a turn runs.

    ``conversation`` (the Conversation's name) adds a Stop button that carries it.
    """

    phase: str
    steps_done: Sequence[str] = ()
    current_step: str | None = None
    elapsed_seconds: float = 0.0
    time_left_seconds: float | None = None
    conversation: str | None = None


# --- small pieces ---------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``1h 02m``."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def format_tokens(count: int) -> str:
    """``950``, ``12.3k``, ``1.2M``."""
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.1f}M"


def one_line(text: str, limit: int = STEP_TEXT_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut), safe in mrkdwn."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return plain_to_mrkdwn(flat)


def link(target: Link) -> str:
    """``<url|label>`` when the URL is safe to link, else the escaped label (or URL)."""
    label = one_line(target.text or target.url, STEP_TEXT_LIMIT)
    url = target.url
    if (
        url.startswith(("https://", "http://"))
        and not any(char in url for char in "|<>` \t\n")
        and len(url) < 2000
    ):
        return f"<{escape(url)}|{label}>"
    return label


def code_block(text: str, limit: int) -> str:
    """``text`` as a fenced code block of at most ``limit`` characters (clipped, fences balanced)."""
    body = escape(text).replace("```", "`" + ZERO_WIDTH_SPACE + "``")
    body = clip(body, limit - 8, note="\n… ({count:,} more characters)")
    return f"```\n{body}\n```"


def section(text: str) -> dict[str, Any]:
    """A mrkdwn section block."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def context(*texts: str) -> dict[str, Any]:
    """A context block with one mrkdwn element per text (at most ten)."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text} for text in texts]}


def button(label: str, action_id: str, value: str, *, style: str | None = None) -> dict[str, Any]:
    """A button carrying ``value``; refuses values Slack would reject, rather than lose the click."""
    if not value or slack_length(value) > constants.SLACK_MAX_BUTTON_VALUE:
        raise ValueError(
            f"button value must be 1 to {constants.SLACK_MAX_BUTTON_VALUE} characters, got {len(value)}: "
            "pass the conversation name, never message content"
        )
    if not action_id or len(action_id) > constants.SLACK_MAX_ACTION_ID:
        raise ValueError(f"action_id must be 1 to {constants.SLACK_MAX_ACTION_ID} characters: {action_id!r}")
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label[: constants.SLACK_MAX_BUTTON_TEXT], "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        element["style"] = style
    return element


# --- the answer -----------------------------------------------------------------------------------------


def footer_blocks(footer: AnswerFooter) -> list[dict[str, Any]]:
    """The line under a final answer: tokens, cache hit rate, cost, duration, branch and pull request."""
    # "in" counts every prompt token, cached or not (the API's input_tokens leaves the cached ones out,
    # so a fully cached turn would read "0 in"); the cache share says how much of it was cheap.
    prompt = footer.input_tokens + footer.cache_read_tokens + footer.cache_write_tokens
    parts = [f"🔢 {format_tokens(prompt)} in · {format_tokens(footer.output_tokens)} out"]
    if footer.cache_read_tokens or footer.cache_write_tokens:
        parts.append(f"♻️ {footer.cache_read_tokens / prompt:.0%} from cache")
    if footer.cost_usd is not None:
        parts.append("💵 <$0.01" if footer.cost_usd < 0.01 else f"💵 ~${footer.cost_usd:,.2f}")
    if footer.duration_seconds is not None:
        parts.append(f"⏱️ {format_duration(footer.duration_seconds)}")
    if footer.branch is not None:
        parts.append(f"🌿 {link(footer.branch)}")
    if footer.pull_request is not None:
        parts.append(f"🔀 {link(footer.pull_request)}")
    return [context(*parts)]


def _truncation_notice(characters: int, location: str) -> str:
    return f"✂️ Output truncated: {characters:,} more characters; the full output is in {one_line(location)}."


def answer_messages(
    markdown: str,
    *,
    footer: AnswerFooter | None = None,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    overflow_location: str = DEFAULT_OVERFLOW_LOCATION,
) -> RenderedAnswer:
    """The agent's Markdown answer as one or more Slack messages, each within every limit.

    Long answers are split at paragraph, then line, then word boundaries; each part is labelled
    ``(2/3)``. Past ``max_messages`` the rest is cut: the last message says how much and where it is
    (``overflow_location``), and the result carries that rest as Markdown for the caller to upload.
    The footer, if any, goes under the last message.
    """
    if max_messages < 1:
        raise ValueError(f"max_messages must be at least 1, got {max_messages}")
    converted = markdown_to_blocks(markdown)
    extra = footer_blocks(footer) if footer is not None else []
    widest_label = context(f"({max_messages}/{max_messages})")
    widest_notice = context(_truncation_notice(len(converted.source), overflow_location))
    reserved = [widest_label, widest_notice, *extra]
    max_blocks = constants.SLACK_MAX_BLOCKS - len(reserved)
    budget = SLACK_MAX_BLOCKS_TEXT - sum(block_cost(block) for block in reserved)

    groups: list[list[ContentBlock]] = []
    current: list[ContentBlock] = []
    used = 0
    for block in converted.blocks:
        cost = block_cost(block.to_block())
        if current and (len(current) >= max_blocks or used + cost > budget):
            carried: list[ContentBlock] = []
            while len(current) > 1 and current[-1].kind in ("header", "divider"):
                carried.insert(0, current.pop())  # a heading goes with what it heads
            groups.append(current)
            current = carried
            used = sum(block_cost(item.to_block()) for item in carried)
        current.append(block)
        used += cost
    groups.append(current)
    for group in groups:
        while group and group[0].kind == "divider":
            group.pop(0)
        while group and group[-1].kind == "divider":
            group.pop()
    groups = [group for group in groups if group]

    truncated = len(groups) > max_messages
    overflow = ""
    overflow_characters = 0
    if truncated:
        first_hidden = groups[max_messages][0]
        overflow = first_hidden.reopen + converted.source[first_hidden.start :]
        overflow_characters = len(converted.source) - first_hidden.start
        groups = groups[:max_messages]

    messages: list[dict[str, Any]] = []
    for number, group in enumerate(groups, start=1):
        last = number == len(groups)
        blocks: list[dict[str, Any]] = []
        label = f"({number}/{len(groups)})" if len(groups) > 1 else ""
        if label:
            blocks.append(context(label))
        blocks.extend(block.to_block() for block in group)
        texts = [block.as_mrkdwn() for block in group if block.kind != "divider"]
        if last and truncated:
            notice = _truncation_notice(overflow_characters, overflow_location)
            blocks.append(context(notice))
            texts.append(notice)
        if last:
            blocks.extend(extra)
        text = (f"{label}\n" if label else "") + "\n\n".join(texts)
        messages.append({"text": clip(text, constants.SLACK_MAX_MESSAGE_TEXT), "blocks": blocks})
    if not messages:
        empty = "The answer had no text."
        messages.append({"text": empty, "blocks": [context(f"_{empty}_"), *extra]})
    return RenderedAnswer(messages, truncated, overflow, overflow_characters)


# --- the other messages ---------------------------------------------------------------------------------


def status_message(view: StatusView) -> dict[str, Any]:
    """The status message edited in place while a turn runs: phase, checklist, time, Stop button."""
    emoji, label = _PHASES.get(view.phase, ("•", view.phase))
    timing = [f"{format_duration(view.elapsed_seconds)} elapsed"]
    if view.time_left_seconds is not None:
        timing.append(f"{format_duration(view.time_left_seconds)} left")
    headline = f"{emoji} *{one_line(label)}*  ·  " + "  ·  ".join(timing)
    lines: list[str] = []
    shown = list(view.steps_done)[-STATUS_STEPS_SHOWN:]
    earlier = len(view.steps_done) - len(shown)
    if earlier:
        lines.append(f"✓ _…and {earlier} earlier step{'s' if earlier != 1 else ''}_")
    lines.extend(f"✓ {one_line(step)}" for step in shown)
    if view.current_step:
        lines.append(f"▸ *{one_line(view.current_step)}*")
    blocks = [section(headline)]
    if lines:
        blocks.append(section("\n".join(lines)))
    if view.conversation:
        blocks.append(
            {"type": "actions", "elements": [button("Stop", ACTION_STOP, view.conversation, style="danger")]}
        )
    doing = view.current_step or (view.steps_done[-1] if view.steps_done else "")
    text = f"{emoji} {one_line(label)}" + (f": {one_line(doing)}" if doing else "") + f" ({timing[0]})"
    return {"text": text, "blocks": blocks}


def paused_message(*, conversation: str, limit_minutes: int, branch: Link | None = None) -> dict[str, Any]:
    """Said when a turn stops at the time limit: the work is saved; Continue (or a reply) picks it up."""
    saved = "My work so far is saved" + (f" and pushed to {link(branch)}" if branch else "") + "."
    body = (
        f"⏳ *I paused at the {limit_minutes}-minute time limit.* {saved}\n"
        "Press *Continue* to pick up where I stopped, or reply in this thread to change course."
    )
    return {
        "text": f"⏳ Paused at the {limit_minutes}-minute time limit. {saved} "
        "Press Continue or reply to go on.",
        "blocks": [
            section(body),
            {
                "type": "actions",
                "elements": [button("Continue", ACTION_CONTINUE, conversation, style="primary")],
            },
        ],
    }


def error_message(what_happened: str, what_to_do: str, *, detail: str | None = None) -> dict[str, Any]:
    """An error said plainly: what happened, what to do about it, and optionally the technical detail."""
    happened = one_line(what_happened, ERROR_TEXT_LIMIT)
    todo = one_line(what_to_do, ERROR_TEXT_LIMIT)
    blocks = [section(f"❌ *{happened}*\n*What to do:* {todo}")]
    if detail and detail.strip():
        blocks.append(section(code_block(detail.strip(), ERROR_DETAIL_LIMIT)))
    return {"text": f"❌ {happened} What to do: {todo}", "blocks": blocks}


def help_message(
    *,
    trigger_phrase: str = constants.DEFAULT_TRIGGER_PHRASE,
    timeout_minutes: int = constants.DEFAULT_SESSION_TIMEOUT_MINUTES,
    organization: str = constants.DEFAULT_GITHUB_ORGANIZATION,
) -> dict[str, Any]:
    """How to use Peerbot, for ``help`` and for mentions with nothing to do."""
    trigger = one_line(trigger_phrase, 80)
    org = one_line(organization, 100)
    lines = [
        f"• *Ask:* mention {trigger} in a thread with what you want done, e.g. "
        f"_{trigger} add a health check endpoint to the API_.",
        f"• *Repository:* I work in your own private repository in _{org}_, or in another one if you name it "
        "(`owner/name`). Every thread gets its own branch and pull request.",
        "• *Follow up:* reply in the same thread, even days later; I remember what we did there.",
        f"• *Time limit:* each turn runs for up to {timeout_minutes} minutes. If I run out, I save my work "
        "and you can press *Continue*.",
        "• *Stop:* press *Stop* on my status message at any time.",
        "• *Progress:* 👀 seen, ⚙️ working, ✅ done, ❌ failed, ⏳ paused at the time limit.",
    ]
    return {
        "text": f"How to use Peerbot: mention {trigger} in a thread with what you want done.",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "How to work with Peerbot", "emoji": True},
            },
            section("\n".join(lines)),
        ],
    }
