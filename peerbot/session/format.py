"""The stored session format: what one Slack thread's agent did, as versioned JSON objects.

A session is keyed by thread (:class:`SessionKey`: team, channel, thread timestamp), never by date. It is
stored as two kinds of object, each carrying ``schemaVersion`` and ``kind``:

- one small **head** (:class:`SessionHead`): the manifest. It names the step segments that make up the
  history, and holds the token totals, the repository and branch, the newest Slack message answered, the
  turn count, and what a worker needs to resume a paused turn (:class:`ResumeState`). The head is the only
  object ever overwritten, always under a generation precondition (see :mod:`peerbot.session.store`).
- immutable **segments** (:class:`Segment`): consecutive :class:`Step` s of the Claude Messages-API history
  (``tool_use`` / ``tool_result`` content blocks included). The first segment may carry the compaction
  summary (:class:`CompactionSummary`) of the steps it replaced.

Messages keep exactly the keys they were given (:class:`Message` round-trips any API message, including
block types this module does not know), so what the worker sends to Claude is what it gets back.

Loading an object runs the migrations of :data:`MIGRATIONS` up to
:data:`peerbot.constants.SESSION_SCHEMA_VERSION`; a newer version than this code knows fails with
:class:`UnsupportedSchemaVersionError`, which says what to do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
)
from pydantic.alias_generators import to_camel

from peerbot import constants
from peerbot.conversation import SLACK_ID_PATTERN, SLACK_TS_PATTERN

_SLACK_ID = re.compile(SLACK_ID_PATTERN)
_SLACK_TS = re.compile(SLACK_TS_PATTERN)


# --- Errors ---------------------------------------------------------------------------------------------


class SessionError(Exception):
    """Base class of every session error; the message says what happened and what to do."""


class UnsupportedSchemaVersionError(SessionError):
    """A stored object was written by a newer Peerbot (or by none): this code cannot read it safely."""


class SessionCorruptError(SessionError):
    """A stored object is not valid JSON, not a valid session object, or does not fit its head."""


# --- Keys -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Which thread a session belongs to: Slack team, channel and thread timestamp (never a date).

    The parts are checked against Slack's shapes (as the Conversation resource checks them), which also
    makes them safe as object-name and path components.
    """

    team: str
    channel: str
    thread_ts: str

    def __post_init__(self) -> None:
        for label, value, pattern in (
            ("team", self.team, _SLACK_ID),
            ("channel", self.channel, _SLACK_ID),
            ("thread_ts", self.thread_ts, _SLACK_TS),
        ):
            if not pattern.match(value):
                raise ValueError(
                    f"session key {label}={value!r} does not match {pattern.pattern}: pass Slack's own ids "
                    "(e.g. team 'T024BE7LD', channel 'C01ABCDEF', thread_ts '1700000000.123456')"
                )

    @property
    def path(self) -> str:
        """``team/channel/thread_ts``: the key as a relative object path."""
        return f"{self.team}/{self.channel}/{self.thread_ts}"

    def __str__(self) -> str:
        return self.path


# --- Claude messages ------------------------------------------------------------------------------------


class _Block(BaseModel):
    """A Messages-API content block that serialises to exactly the keys it was given.

    Unknown keys (``cache_control``, ``citations``, fields added to the API later) are kept as extras, and
    optional fields that were never set are left out, so ``Message.model_validate(d).to_api() == d``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        given = self.model_fields_set | set(self.__pydantic_extra__ or ())
        return {name: value for name, value in data.items() if name in given or name == "type"}


class TextBlock(_Block):
    """Plain text from the user or the model."""

    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(_Block):
    """The model asks for a tool to run; ``id`` pairs it with the :class:`ToolResultBlock` that answers."""

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, JsonValue]


class ToolResultBlock(_Block):
    """What a tool returned (in a user message), for the :class:`ToolUseBlock` with id ``tool_use_id``."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str | list[dict[str, JsonValue]] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Block):
    """Extended thinking; must be sent back unchanged (with its signature) on the next request."""

    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class RedactedThinkingBlock(_Block):
    """Thinking the API returned encrypted; sent back unchanged."""

    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class OtherBlock(_Block):
    """Any other block type (images, documents, server tools...), kept as given."""

    type: str


_KNOWN_BLOCKS: Final = frozenset({"text", "tool_use", "tool_result", "thinking", "redacted_thinking"})


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _KNOWN_BLOCKS else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]
"""One content block of a message, typed for the kinds Peerbot works with, kept as given for the rest."""


class Message(BaseModel):
    """One Messages-API message: ``role`` and ``content`` (a string or a list of content blocks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    def to_api(self) -> dict[str, Any]:
        """The message as the Messages API takes it (``messages=[...]``): exactly the keys given."""
        return self.model_dump(mode="json")

    @property
    def blocks(self) -> list[ContentBlock]:
        """The content as blocks (a string content is one text block)."""
        if isinstance(self.content, str):
            return [TextBlock(text=self.content)]
        return list(self.content)

    def tool_uses(self) -> list[ToolUseBlock]:
        """The tool calls the model asked for in this message."""
        return [block for block in self.blocks if isinstance(block, ToolUseBlock)]

    def tool_results(self) -> list[ToolResultBlock]:
        """The tool results this message carries."""
        return [block for block in self.blocks if isinstance(block, ToolResultBlock)]

    @property
    def text(self) -> str:
        """The text blocks joined (what a person would read)."""
        return "".join(block.text for block in self.blocks if isinstance(block, TextBlock))


# --- Stored objects -------------------------------------------------------------------------------------


class _Stored(BaseModel):
    """camelCase on the wire (like the Conversation resource), snake_case in Python; unknown keys refused.

    Refusing unknown keys means any change to the format needs a schema version bump and a migration,
    so an older Peerbot can never drop fields a newer one wrote.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _now() -> datetime:
    return datetime.now(UTC)


class TokenUsage(_Stored):
    """Tokens spent, in the Conversation status' terms: input, output, cacheRead, cacheWrite."""

    input: int = Field(default=0, ge=0)
    output: int = Field(default=0, ge=0)
    cache_read: int = Field(default=0, ge=0)
    cache_write: int = Field(default=0, ge=0)

    @classmethod
    def from_api(cls, usage: Any) -> TokenUsage:
        """From the Messages API's ``usage`` (an SDK object or its dict form); missing counts are 0."""

        def count(name: str) -> int:
            value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
            return int(value or 0)

        return cls(
            input=count("input_tokens"),
            output=count("output_tokens"),
            cache_read=count("cache_read_input_tokens"),
            cache_write=count("cache_creation_input_tokens"),
        )

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input=self.input + other.input,
            output=self.output + other.output,
            cache_read=self.cache_read + other.cache_read,
            cache_write=self.cache_write + other.cache_write,
        )

    @property
    def total(self) -> int:
        """All four counts together."""
        return self.input + self.output + self.cache_read + self.cache_write


class Step(_Stored):
    """One checkpointed step: a model response, or the tool results (or user message) that followed.

    ``usage`` is what producing this step cost (a model step's usage; zero for tool results); the head's
    token totals are the sum over every step ever appended, so they survive compaction.
    """

    message: Message
    usage: TokenUsage = Field(default_factory=TokenUsage)
    created_at: datetime = Field(default_factory=_now)


class CompactionSummary(_Stored):
    """The summary that replaced every step before ``through_seq`` (steps ``0 .. through_seq - 1``)."""

    text: str
    through_seq: int = Field(ge=0)
    compactions: int = Field(default=1, ge=1, description="How many compactions this summary has absorbed.")
    usage: TokenUsage = Field(default_factory=TokenUsage, description="What writing this summary cost.")
    created_at: datetime = Field(default_factory=_now)


class ResumeState(_Stored):
    """What a worker needs to continue a paused turn (set when pausing, cleared when the turn ends).

    The conversation itself (including tool calls still waiting for results, see
    :func:`pending_tool_uses`) is in the steps; this holds the pointers around it.
    """

    reason: str = Field(description="Why the turn paused, e.g. 'deadline' or 'cancelled'.")
    paused_at: datetime = Field(default_factory=_now)
    requested_ts: str | None = Field(
        default=None, pattern=SLACK_TS_PATTERN, description="The message being answered."
    )
    status_message_ts: str | None = Field(
        default=None, pattern=SLACK_TS_PATTERN, description="The message edited."
    )
    turn: int | None = Field(default=None, ge=1)
    tool_calls: int = Field(
        default=0, ge=0, description="Tool calls made so far in the paused turn (depth limit)."
    )
    details: dict[str, JsonValue] = Field(default_factory=dict, description="Anything else the worker keeps.")


class SegmentRef(_Stored):
    """The head's pointer to one segment: its object name and which steps it holds."""

    name: str = Field(pattern=r"^[0-9]{9}-[0-9]{9}-[0-9a-f]{12}\.json$")
    first_seq: int = Field(ge=0)
    count: int = Field(ge=0)
    level: int = Field(
        default=0, ge=0, description="Consolidation level: merged from MERGE_FANOUT segments a level below."
    )
    size: int = Field(default=0, ge=0, description="Encoded size in bytes.")


class _Keyed(_Stored):
    """Every stored object names its thread, so a misplaced object is recognised, not misread."""

    schema_version: int = constants.SESSION_SCHEMA_VERSION
    team: str = Field(pattern=SLACK_ID_PATTERN)
    channel: str = Field(pattern=SLACK_ID_PATTERN)
    thread_ts: str = Field(pattern=SLACK_TS_PATTERN)

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.team, self.channel, self.thread_ts)


class SessionHead(_Keyed):
    """The manifest of one session: the segments that hold its history, and its small, changing state."""

    kind: Literal["head"] = "head"
    commit_id: str = Field(
        description="Random per write: lets a writer recognise its own write after an ambiguous retry."
    )
    created_at: datetime
    updated_at: datetime
    repository: str | None = None
    branch: str | None = None
    answered_ts: str | None = Field(default=None, pattern=SLACK_TS_PATTERN)
    turns: int = Field(default=0, ge=0)
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    resume: ResumeState | None = None
    first_seq: int = Field(
        default=0, ge=0, description="The first step still stored (older ones are summarised)."
    )
    next_seq: int = Field(default=0, ge=0, description="The sequence number the next appended step gets.")
    segments: list[SegmentRef] = Field(default_factory=list)


class Segment(_Keyed):
    """An immutable run of consecutive steps from ``first_seq`` on (plus the summary, in the first one)."""

    kind: Literal["segment"] = "segment"
    first_seq: int = Field(ge=0)
    summary: CompactionSummary | None = None
    steps: list[Step]


class SessionChanges(_Stored):
    """Changes to the head written together with a step (or alone). Only the fields you set are applied.

    ``SessionChanges(answered_ts="1700000001.000200", resume=None)`` sets the answered message and clears
    the resume state; it leaves the repository, branch and turns alone.
    """

    repository: str | None = None
    branch: str | None = None
    answered_ts: str | None = Field(default=None, pattern=SLACK_TS_PATTERN)
    turns: int | None = Field(default=None, ge=0)
    resume: ResumeState | None = None

    @field_validator("turns")
    @classmethod
    def _turns_not_cleared(cls, value: int | None) -> int | None:
        if value is None:
            raise ValueError("turns cannot be cleared; set it to a whole number")
        return value

    def updates(self) -> dict[str, Any]:
        """The head fields to change (only those set), for ``SessionHead.model_copy(update=...)``."""
        return {name: getattr(self, name) for name in self.model_fields_set}


# --- The loaded view ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One session as loaded: its head, the summary, and every stored step, at one generation.

    Pass ``generation`` back as ``expected_generation`` on the next write. ``steps[i]`` has sequence
    number ``first_seq + i``. Everything in it is shared with the store's cache: the models are frozen,
    and their lists and dicts must be treated as read-only too.
    """

    key: SessionKey
    generation: int
    head: SessionHead
    summary: CompactionSummary | None
    steps: tuple[Step, ...]

    @property
    def repository(self) -> str | None:
        return self.head.repository

    @property
    def branch(self) -> str | None:
        return self.head.branch

    @property
    def answered_ts(self) -> str | None:
        return self.head.answered_ts

    @property
    def turns(self) -> int:
        return self.head.turns

    @property
    def tokens(self) -> TokenUsage:
        return self.head.tokens

    @property
    def resume(self) -> ResumeState | None:
        return self.head.resume

    @property
    def first_seq(self) -> int:
        return self.head.first_seq

    @property
    def next_seq(self) -> int:
        return self.head.next_seq

    @property
    def messages(self) -> list[Message]:
        """The stored history (after the summary), oldest first."""
        return [step.message for step in self.steps]


def pending_tool_uses(steps: Iterable[Step]) -> list[ToolUseBlock]:
    """Tool calls without a result yet (what a paused turn still has to run), oldest first."""
    answered: set[str] = set()
    calls: list[ToolUseBlock] = []
    for step in steps:
        calls.extend(step.message.tool_uses())
        answered.update(result.tool_use_id for result in step.message.tool_results())
    return [call for call in calls if call.id not in answered]


def orphan_tool_results(steps: Iterable[Step]) -> list[str]:
    """Ids of tool results whose ``tool_use`` is not among ``steps`` (the API rejects such a history)."""
    seen: set[str] = set()
    orphans: list[str] = []
    for step in steps:
        orphans.extend(
            result.tool_use_id for result in step.message.tool_results() if result.tool_use_id not in seen
        )
        seen.update(call.id for call in step.message.tool_uses())
    return orphans


# --- Encoding, decoding, migration ----------------------------------------------------------------------

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: ``MIGRATIONS[v]`` turns a stored object (head or segment, see its ``kind``) of schema version ``v`` into
#: one of version ``v + 1``. Version 1 is the first, so there is nothing to migrate yet; when the format
#: changes, bump SESSION_SCHEMA_VERSION and add the step from the old version here.
MIGRATIONS: dict[int, Migration] = {}

_M = TypeVar("_M", bound=_Keyed)


def encode(obj: SessionHead | Segment) -> bytes:
    """The stored bytes of a head or segment: compact UTF-8 JSON, camelCase keys."""
    return obj.model_dump_json(by_alias=True).encode()


def migrate(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Bring a decoded object up to the current schema version; ``where`` names it in error messages."""
    version = raw.get("schemaVersion")
    current = constants.SESSION_SCHEMA_VERSION
    if not isinstance(version, int) or isinstance(version, bool):
        raise SessionCorruptError(
            f"{where} has no schemaVersion, so it is not a Peerbot session object: delete the session to "
            "start the thread afresh, or restore the object from a backup"
        )
    if version > current:
        raise UnsupportedSchemaVersionError(
            f"{where} has session schema version {version}, but this Peerbot reads versions up to {current}: "
            "run a newer Peerbot (worker image) for this thread; an older one must not touch it"
        )
    while version < current:
        step = MIGRATIONS.get(version)
        if step is None:
            raise UnsupportedSchemaVersionError(
                f"{where} has session schema version {version}, and this Peerbot has no migration from it to "
                f"{current}: load it with the Peerbot release that wrote it, or delete the session"
            )
        raw = step(dict(raw))
        version += 1
        raw["schemaVersion"] = version
    return raw


def decode(data: bytes, model: type[_M], where: str, key: SessionKey | None = None) -> _M:
    """Parse, migrate and validate one stored object, checking it belongs to ``key`` when given."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SessionCorruptError(f"{where} is not valid JSON ({error}): delete or restore it") from None
    if not isinstance(raw, dict):
        raise SessionCorruptError(f"{where} is not a JSON object: delete or restore it")
    raw = migrate(raw, where)
    try:
        obj = model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        kind = model.model_fields["kind"].default
        raise SessionCorruptError(
            f"{where} is not a valid session {kind} ({problems}): delete the session to start the thread "
            "afresh, or restore the object from a backup"
        ) from None
    if key is not None and obj.key != key:
        raise SessionCorruptError(f"{where} belongs to thread {obj.key}, not {key}: it was copied or renamed")
    return obj


def total_usage(steps: Sequence[Step]) -> TokenUsage:
    """The sum of the steps' usage."""
    usage = TokenUsage()
    for step in steps:
        usage = usage + step.usage
    return usage
