"""What a Slack event means for Peerbot: pure decisions over plain data, no I/O.

:func:`classify` turns one Events API event into either :class:`Ignore` (with a short reason that becomes a
metric label) or a :class:`Candidate`: a new human message that may be for Peerbot, with how it reached us
(:class:`Trigger`), the text addressed to Peerbot, and any in-thread command. :func:`decide` then applies
the policy (direct messages, private channels, allow-lists, maintenance, follow-ups without a mention) once
the caller knows the facts that need I/O (does the thread have a Conversation? is the channel private?).

Edits and deletions are deliberately ignored (see ``docs/dispatcher.md``): an edited request is not re-run,
and deleting a message does not cancel; people say ``stop`` for that.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from peerbot import constants
from peerbot.conversation import SLACK_ID_PATTERN, SLACK_TS_PATTERN, is_valid_repository

#: Message subtypes that are a person saying something new. Everything else (edits, deletions, joins,
#: topic changes, bot messages, "message_replied" bookkeeping...) is not a request.
HUMAN_SUBTYPES: Final = frozenset({None, "file_share", "thread_broadcast", "me_message"})
#: Subtypes that are edits or deletions: ignored on purpose and counted apart from the rest.
EDIT_SUBTYPES: Final = frozenset({"message_changed"})
DELETE_SUBTYPES: Final = frozenset({"message_deleted"})
#: Slack's channel_type for direct messages and private channels (``message`` events carry it).
CHANNEL_TYPE_IM: Final = "im"
CHANNEL_TYPE_PRIVATE: Final = "group"
CHANNEL_TYPE_MPIM: Final = "mpim"
#: Files recorded per request; a message can carry at most 10 files in Slack's clients, so this is a guard.
MAX_FILE_REFERENCES: Final = 20
#: Command words are matched on the whole addressed text, so "stop the crash loop" stays a request.
STOP_WORDS: Final = frozenset({"stop", "cancel", "abort"})
STATUS_WORDS: Final = frozenset({"status", "progress"})
HELP_WORDS: Final = frozenset({"help", "?", "usage"})

_SLACK_ID = re.compile(SLACK_ID_PATTERN)
_SLACK_TS = re.compile(SLACK_TS_PATTERN)
_REPO_TOKEN = re.compile(r"(?<![\w/])repo(?:sitory)?\s*[=:]\s*(\S+)", re.IGNORECASE)
_GITHUB_URL = re.compile(r"^(?:https?://)?(?:www\.)?github\.com/", re.IGNORECASE)
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""


class Trigger(StrEnum):
    """How a message reached Peerbot."""

    MENTION = "mention"  # app_mention, or a message that mentions the bot user
    PHRASE = "phrase"  # the trigger phrase typed as text (SLACK_TRIGGER_PHRASE)
    DIRECT = "direct"  # a direct message to the bot
    THREAD_REPLY = "thread_reply"  # a reply without a mention, in a thread that may have a Conversation


class Command(StrEnum):
    """In-thread commands: the whole addressed text is one of these words."""

    STOP = "stop"
    STATUS = "status"
    HELP = "help"


@dataclass(frozen=True)
class FileRef:
    """A file shared with a request, kept as a reference (Slack file id) for the worker, never content."""

    id: str
    name: str = ""
    mimetype: str = ""
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "mimetype": self.mimetype, "size": self.size}


@dataclass(frozen=True)
class SlackMessage:
    """A person's new message, normalised from an ``app_mention`` or ``message`` event."""

    team: str
    channel: str
    user: str
    ts: str
    thread_ts: str  # the thread it belongs to: its own ts when it starts one
    text: str
    channel_type: str | None = None  # "channel", "group", "im", "mpim"; app_mention events carry none
    files: tuple[FileRef, ...] = ()

    @property
    def in_thread(self) -> bool:
        """True when the message is a reply in an existing thread (not the thread's first message)."""
        return self.thread_ts != self.ts

    @property
    def is_direct(self) -> bool:
        return self.channel_type == CHANNEL_TYPE_IM or (self.channel_type is None and self.channel[:1] == "D")


@dataclass(frozen=True)
class Ignore:
    """Not for Peerbot, or not a new human message. ``reason`` is a short, fixed metric label."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Candidate:
    """A new human message that may be for Peerbot."""

    message: SlackMessage
    trigger: Trigger
    #: The text with the bot's mention and the trigger phrase removed, stripped.
    prompt: str
    command: Command | None = None
    #: ``repo=owner/name`` given in the message, validated.
    repository: str | None = None
    #: The ``repo=`` value that was given but is not ``owner/name``: the person is told.
    bad_repository: str | None = None

    @property
    def addressed(self) -> bool:
        """True when the person spoke to Peerbot (mention, phrase or direct message), not just replied."""
        return self.trigger is not Trigger.THREAD_REPLY

    @property
    def too_long(self) -> bool:
        """Longer than Slack keeps for a message: the person is told what will be read."""
        return len(self.message.text) > constants.SLACK_MAX_MESSAGE_TEXT


Classified = Ignore | Candidate


@dataclass(frozen=True)
class Policy:
    """The settings the decisions depend on, as plain data."""

    bot_user_id: str
    bot_id: str | None = None
    trigger_phrase: str = constants.DEFAULT_TRIGGER_PHRASE
    allow_direct_messages: bool = True
    allow_private_channels: bool = False
    follow_up_without_mention: bool = True
    allowed_channels: frozenset[str] = field(default_factory=frozenset)
    allowed_users: frozenset[str] = field(default_factory=frozenset)
    maintenance: bool = False


# --- text -----------------------------------------------------------------------------------------------


def mentions_user(text: str, user_id: str) -> bool:
    """True when ``text`` mentions ``user_id`` the way Slack writes it (``<@U123>`` or ``<@U123|name>``)."""
    return re.search(rf"<@{re.escape(user_id)}(?:\|[^>]*)?>", text) is not None


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    # Bounded by anything that is not a word character, so "@peerbotai," matches and "@peerbotaix" does not.
    return re.compile(rf"(?<![\w@]){re.escape(phrase.strip())}(?!\w)", re.IGNORECASE)


def has_trigger_phrase(text: str, phrase: str) -> bool:
    """True when the trigger phrase appears in ``text`` as a whole word, in any case."""
    return bool(phrase.strip()) and _phrase_pattern(phrase).search(text) is not None


def addressed_text(text: str, *, bot_user_id: str, phrase: str) -> str:
    """``text`` without the bot's mentions and the trigger phrase, whitespace collapsed at the ends."""
    without = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    if phrase.strip():
        without = _phrase_pattern(phrase).sub(" ", without)
    return re.sub(r"[ \t]{2,}", " ", without).strip()


def parse_command(prompt: str) -> Command | None:
    """The in-thread command the whole ``prompt`` is, if any (``stop``, ``status``, ``help``).

    >>> parse_command("Stop!"), parse_command("stop the crash loop")
    (<Command.STOP: 'stop'>, None)
    """
    stripped = prompt.strip()
    if stripped in HELP_WORDS:
        return Command.HELP
    word = stripped.strip(string.punctuation + " ").lower()
    if word in STOP_WORDS:
        return Command.STOP
    if word in STATUS_WORDS:
        return Command.STATUS
    if word in HELP_WORDS:
        return Command.HELP
    return None


def parse_repository(text: str) -> tuple[str | None, str | None]:
    """``(repository, bad_value)`` from a ``repo=owner/name`` in ``text``; ``(None, None)`` when absent.

    Slack writes links as ``<url|label>``; a GitHub URL is accepted and reduced to ``owner/name``.

    >>> parse_repository("please fix repo=octo/hello.")
    ('octo/hello', None)
    >>> parse_repository("repo=nope")
    (None, 'nope')
    """
    match = _REPO_TOKEN.search(text)
    if match is None:
        return None, None
    value = match.group(1)
    if value.startswith("<") and ">" in value:
        value = value[1:].split(">", 1)[0].split("|", 1)[0]
    value = value.rstrip(_TRAILING_PUNCTUATION)
    value = _GITHUB_URL.sub("", value).removesuffix(".git").strip("/")
    if is_valid_repository(value):
        return value, None
    return None, value or match.group(1)


def _file_refs(raw: Any) -> tuple[FileRef, ...]:
    if not isinstance(raw, list):
        return ()
    refs: list[FileRef] = []
    for item in raw[:MAX_FILE_REFERENCES]:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            continue
        size = item.get("size")
        refs.append(
            FileRef(
                id=item["id"],
                name=str(item.get("name") or item.get("title") or ""),
                mimetype=str(item.get("mimetype") or ""),
                size=size if isinstance(size, int) and size >= 0 else 0,
            )
        )
    return tuple(refs)


# --- classification -------------------------------------------------------------------------------------


def classify(event: Mapping[str, Any], *, team: str | None, policy: Policy) -> Classified:
    """What one ``app_mention`` or ``message`` event is, before any I/O.

    ``team`` is the envelope's ``team_id`` (events inside it may lack one).
    """
    event_type = event.get("type")
    if event_type not in ("app_mention", "message"):
        return Ignore("unknown_type", f"event type {event_type!r} is not handled")
    subtype = event.get("subtype")
    if subtype in EDIT_SUBTYPES:
        return Ignore("edited", "edits do not re-run a request; reply in the thread instead")
    if subtype in DELETE_SUBTYPES:
        return Ignore("deleted", "deleting a message does not cancel; say stop instead")
    if event.get("bot_id") or event.get("bot_profile") or subtype == "bot_message":
        own = event.get("bot_id") == policy.bot_id or event.get("user") == policy.bot_user_id
        return Ignore("self" if own else "bot", "messages from bots are never requests")
    if event.get("user") == policy.bot_user_id:
        return Ignore("self", "Peerbot's own message")
    if subtype not in HUMAN_SUBTYPES:
        return Ignore("subtype", f"subtype {subtype!r} is not a new human message")
    if event.get("hidden"):
        return Ignore("subtype", "hidden message events are bookkeeping")

    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    team_id = team or event.get("team")
    text = event.get("text") or ""
    problems = [
        name
        for name, value, pattern in (
            ("user", user, _SLACK_ID),
            ("channel", channel, _SLACK_ID),
            ("team", team_id, _SLACK_ID),
            ("ts", ts, _SLACK_TS),
        )
        if not isinstance(value, str) or not pattern.match(value)
    ]
    thread_ts = event.get("thread_ts") or ts
    if not isinstance(thread_ts, str) or not _SLACK_TS.match(thread_ts):
        problems.append("thread_ts")
    if not isinstance(text, str):
        problems.append("text")
    if problems:
        return Ignore("malformed", "missing or malformed: " + ", ".join(problems))
    assert isinstance(user, str)
    assert isinstance(channel, str)
    assert isinstance(ts, str)
    assert isinstance(team_id, str)
    assert isinstance(thread_ts, str)

    channel_type = event.get("channel_type") if isinstance(event.get("channel_type"), str) else None
    message = SlackMessage(
        team=team_id,
        channel=channel,
        user=user,
        ts=ts,
        thread_ts=thread_ts,
        text=text,
        channel_type=channel_type,
        files=_file_refs(event.get("files")),
    )
    mentioned = mentions_user(text, policy.bot_user_id)
    if event_type == "app_mention":
        trigger = Trigger.MENTION
    elif message.is_direct:
        trigger = Trigger.DIRECT
    elif mentioned:
        # Slack sends app_mention for the same message; that event is the one we act on.
        return Ignore("covered_by_mention", "the app_mention event for this message is handled instead")
    elif has_trigger_phrase(text, policy.trigger_phrase):
        trigger = Trigger.PHRASE
    elif message.in_thread:
        trigger = Trigger.THREAD_REPLY
    else:
        return Ignore("not_addressed", "a channel message that does not mention Peerbot")

    prompt = addressed_text(text, bot_user_id=policy.bot_user_id, phrase=policy.trigger_phrase)
    repository, bad = parse_repository(prompt)
    return Candidate(
        message=message,
        trigger=trigger,
        prompt=prompt,
        command=parse_command(prompt),
        repository=repository,
        bad_repository=bad,
    )


# --- policy ---------------------------------------------------------------------------------------------


class Refusal(StrEnum):
    """Why a message for Peerbot is politely refused (also the metric label)."""

    DIRECT_MESSAGES_OFF = "direct_messages_off"
    PRIVATE_CHANNEL = "private_channel"
    CHANNEL_NOT_ALLOWED = "channel_not_allowed"
    USER_NOT_ALLOWED = "user_not_allowed"


@dataclass(frozen=True)
class Refuse:
    """Answer politely that Peerbot does not work here (or for this person); record nothing."""

    why: Refusal


@dataclass(frozen=True)
class Maintenance:
    """Peerbot is switched off for maintenance: say so, record nothing."""


@dataclass(frozen=True)
class RunCommand:
    command: Command


@dataclass(frozen=True)
class BadRepository:
    value: str


@dataclass(frozen=True)
class Record:
    """Record the request on the thread's Conversation (create it, or patch it to this message)."""

    follow_up: bool


Decision = Ignore | Refuse | Maintenance | RunCommand | BadRepository | Record


def decide(
    candidate: Candidate,
    *,
    policy: Policy,
    thread_has_conversation: bool,
    channel_is_private: bool,
) -> Decision:
    """What to do with a candidate, once the facts that need I/O are known.

    Only messages addressed to Peerbot (or replies in its threads) get an answer; everything else is
    ignored silently. ``stop``, ``status`` and ``help`` keep working in maintenance.
    """
    message = candidate.message
    if candidate.trigger is Trigger.THREAD_REPLY and not (
        thread_has_conversation and policy.follow_up_without_mention
    ):
        reason = "not_addressed" if not thread_has_conversation else "follow_up_needs_mention"
        return Ignore(reason, "a thread reply without a mention")
    if message.is_direct:
        if not policy.allow_direct_messages:
            return Refuse(Refusal.DIRECT_MESSAGES_OFF)
    else:
        if channel_is_private and not policy.allow_private_channels:
            return Refuse(Refusal.PRIVATE_CHANNEL)
        if policy.allowed_channels and message.channel not in policy.allowed_channels:
            return Refuse(Refusal.CHANNEL_NOT_ALLOWED)
    if policy.allowed_users and message.user not in policy.allowed_users:
        return Refuse(Refusal.USER_NOT_ALLOWED)
    if candidate.command is not None:
        return RunCommand(candidate.command)
    if not candidate.prompt and not candidate.message.files:
        # A mention alone: nothing to do, so say how to use Peerbot.
        return RunCommand(Command.HELP)
    if policy.maintenance:
        return Maintenance()
    if candidate.bad_repository is not None:
        return BadRepository(candidate.bad_repository)
    return Record(follow_up=thread_has_conversation)
