"""A scripted stand-in for the Anthropic Messages API ("scripted Claude").

The real ``anthropic`` SDK (2.x, built on httpx2, so respx cannot intercept it) talks to this server through
``base_url``, exactly as it talks to ``api.anthropic.com``:

- ``POST /v1/messages``: streaming (Server-Sent Events, when ``"stream": true``) or a JSON ``Message``;
- ``POST /v1/messages/count_tokens``: an estimate of the input tokens (never consumes the script).

Each ``/v1/messages`` request that passes validation gets the next step of a **script**::

    claude = ScriptedClaude([
        Reply.bash("pytest -q", text="Running the tests."),
        Reply.error(429, retry_after=1),
        lambda request: Reply.text("All green." if "passed" in request.tool_results_text() else "Red."),
    ]).start()
    client = AsyncAnthropic(base_url=claude.url, api_key=claude.api_key)

The server is as strict as the real API about what it accepts (authentication, the ``anthropic-version``
header, required fields, message order, ``tool_use``/``tool_result`` pairing, empty content, at most four
``cache_control`` breakpoints, tool definitions), answering with the real status codes, error types and,
where they are known, the real wording. It never lets a test hang: a script that runs out, a step that uses
a tool the request did not declare, or a callable step that fails answers ``500 api_error`` with
``x-should-retry: false`` (so the SDK does not retry it) and a message saying what to fix; the same text is
kept in :attr:`ScriptedClaude.script_errors`.

Every request is recorded (parsed JSON body, headers without the credential) for tests to assert on the
system prompt, the tools, ``cache_control`` placement and the message history the code under test sent.

The server runs on its own event loop in a background thread, so sync and async code can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import re
import secrets
import threading
import time
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias

from aiohttp import web

from peerbot.logs import get_logger

if TYPE_CHECKING:
    from types import TracebackType

    import anthropic

log = get_logger(__name__)

# --- Limits and shapes of the real API ---------------------------------------------------------------------

#: The real API answers any request without ``anthropic-version`` with 400; the SDK always sends it.
ANTHROPIC_VERSION_HEADER: Final = "anthropic-version"
#: The real API allows at most four ``cache_control`` breakpoints per request
#: ("A maximum of 4 blocks with cache_control may be provided. Found 5.").
MAX_CACHE_BREAKPOINTS: Final = 4
#: ``cache_control`` accepts only ``{"type": "ephemeral"}`` with an optional ``ttl`` of 5 minutes or 1 hour.
CACHE_CONTROL_TTLS: Final = frozenset({"5m", "1h"})
#: A prefix shorter than this is never cached (1,024 tokens for Sonnet and Opus, the smallest documented).
MIN_CACHEABLE_TOKENS: Final = 1024
#: The Messages endpoint refuses bodies over 32 MB with 413 ``request_too_large``.
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024
#: The real API caps a request at 100,000 messages.
MAX_MESSAGES: Final = 100_000
#: Custom tool names must match this pattern (the real API's own validation message quotes it).
TOOL_NAME_PATTERN: Final = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
#: ``tool_use`` ids in the history must match this pattern.
TOOL_USE_ID_PATTERN: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
#: Largest ``max_tokens`` per model family (longest matching prefix wins); unknown models are not capped.
MAX_OUTPUT_TOKENS: Final[Mapping[str, int]] = {
    "claude-opus-4-1": 32_000,
    "claude-opus-4-0": 32_000,
    "claude-opus-4-2": 32_000,
    "claude-opus-4-5": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-sonnet-4-0": 64_000,
    "claude-sonnet-4-2": 64_000,
    "claude-haiku-4-5": 64_000,
    "claude-3-5-haiku": 8_192,
    "claude-3-haiku": 4_096,
}
#: Models that still accept a final assistant message (prefill); Claude 4.6 and later answer 400 to it.
PREFILL_MODEL_PREFIXES: Final = (
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-5",
    "claude-opus-4-1",
    "claude-opus-4-0",
    "claude-sonnet-4-0",
    "claude-3",
)
#: Anthropic-defined tools: ``type`` -> the only ``name`` the API accepts for it (from the SDK's tool params).
ANTHROPIC_TOOL_NAMES: Final[Mapping[str, str]] = {
    "bash_20250124": "bash",
    "text_editor_20250124": "str_replace_editor",
    "text_editor_20250429": "str_replace_based_edit_tool",
    "text_editor_20250728": "str_replace_based_edit_tool",
    "memory_20250818": "memory",
    "code_execution_20250522": "code_execution",
    "code_execution_20250825": "code_execution",
    "code_execution_20260120": "code_execution",
    "code_execution_20260521": "code_execution",
    "web_search_20250305": "web_search",
    "web_search_20260209": "web_search",
    "web_search_20260318": "web_search",
    "web_fetch_20250910": "web_fetch",
    "web_fetch_20260209": "web_fetch",
    "web_fetch_20260309": "web_fetch",
    "web_fetch_20260318": "web_fetch",
}
#: Server tools run on Anthropic's side and answer themselves; a script cannot hand them to the client.
SERVER_TOOL_PREFIXES: Final = ("code_execution_", "web_search_", "web_fetch_")
#: The commands of each text editor version and the input keys each one requires.
TEXT_EDITOR_COMMANDS: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "str_replace_based_edit_tool": {
        "view": ("path",),
        "create": ("path", "file_text"),
        "str_replace": ("path", "old_str"),
        "insert": ("path", "insert_line", "insert_text"),
    },
    "str_replace_editor": {
        "view": ("path",),
        "create": ("path", "file_text"),
        "str_replace": ("path", "old_str"),
        "insert": ("path", "insert_line", "new_str"),
        "undo_edit": ("path",),
    },
}
#: Content block types each role may send (tool_use only from the assistant, tool_result only from the user).
USER_BLOCK_TYPES: Final = frozenset(
    {"text", "image", "document", "search_result", "tool_result", "container_upload", "tool_reference"}
)
ASSISTANT_BLOCK_TYPES: Final = frozenset(
    {
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "compaction",
    }
)
#: Error ``type`` the real API uses for each HTTP status.
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: HTTP status for each error type (for errors sent inside a stream and then replayed without one).
ERROR_STATUSES: Final[Mapping[str, int]] = {kind: status for status, kind in ERROR_TYPES.items()}
DEFAULT_ERROR_MESSAGES: Final[Mapping[str, str]] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": (
        "This request would exceed the rate limit for your organization of 50 requests per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits."
    ),
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}

StopReason: TypeAlias = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]
STOP_REASONS: Final = frozenset(StopReason.__args__)  # type: ignore[attr-defined]

# --- How the stand-in behaves -----------------------------------------------------------------------------

#: Rough size of a token for estimates (English text averages about four characters per token).
CHARS_PER_TOKEN: Final = 4
#: Text deltas carry about this many characters (the real API streams a few tokens per delta).
TEXT_DELTA_CHARS: Final = 20
#: ``input_json_delta`` pieces carry about this many characters of the tool input's JSON.
JSON_DELTA_CHARS: Final = 24
#: How long start() and stop() wait for the server thread before giving up with a clear error.
SERVER_THREAD_TIMEOUT_SECONDS: Final = 10.0
#: How long the server lets in-flight responses finish at stop() before closing their connections.
SHUTDOWN_GRACE_SECONDS: Final = 0.5
#: A step held with :meth:`Reply.held_until` gives up after this long, so a forgotten gate cannot hang a test.
HOLD_TIMEOUT_SECONDS: Final = 30.0
#: How often a held step checks its gate (a server-internal wait, never a test's synchronisation).
HOLD_POLL_SECONDS: Final = 0.005
#: Prefix of the API keys the stand-in hands out (shaped like real keys so log redaction treats them alike).
API_KEY_PREFIX: Final = "sk-ant-test-"
SCRIPT_ERROR_PREFIX: Final = "Scripted Claude: "

_ID_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _estimate_tokens(value: Any) -> int:
    """A plausible token count for a JSON value or text (never zero for something non-empty)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# --- The script ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A text content block of a scripted reply, streamed in several ``text_delta`` events."""

    text: str

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError("Text blocks need some text: the real API never returns an empty text block.")


@dataclass(frozen=True)
class ToolUse:
    """A ``tool_use`` content block: the model asks the client to run ``name`` with ``input``.

    ``id`` is generated (``toolu_...``) when not given.
    """

    name: str
    input: Mapping[str, Any]
    id: str | None = None
    """Fix it only to refer to it in assertions, and use it once: the real API refuses repeated ids."""

    def __post_init__(self) -> None:
        if not TOOL_NAME_PATTERN.match(self.name):
            raise ValueError(f"Tool name {self.name!r} does not match {TOOL_NAME_PATTERN.pattern}.")
        if self.id is not None and not TOOL_USE_ID_PATTERN.match(self.id):
            raise ValueError(f"Tool use id {self.id!r} does not match {TOOL_USE_ID_PATTERN.pattern}.")
        try:
            json.dumps(self.input)
        except TypeError as error:
            raise ValueError(f"The input of tool {self.name!r} must be JSON-serialisable: {error}") from error


Block: TypeAlias = Text | ToolUse


@dataclass(frozen=True)
class Usage:
    """Token counts a step reports; any count left ``None`` is computed from the request and the reply."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


@dataclass(frozen=True)
class ErrorReply:
    """A scripted HTTP error: what the next request gets instead of a message."""

    status: int
    error_type: str
    message: str
    retry_after: float | None = None

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body the real API sends with this error."""
        return {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        }


@dataclass(frozen=True)
class StreamError:
    """An ``error`` event sent inside an already-started stream (the API's way to fail after the 200)."""

    after_events: int
    error_type: str = "overloaded_error"
    message: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted assistant message, built with the class methods below.

    ``cut_after_events`` closes the connection after that many Server-Sent Events without ``message_stop``
    (for a non-streaming request: without any response). ``stream_error`` sends an ``error`` event mid-stream.
    ``hold`` makes the server wait for a :class:`threading.Event` before answering (to test deadlines and
    cancellation without sleeping). ``pace_seconds`` spaces the streamed events out in time.
    """

    content: tuple[Block, ...]
    stop_reason: StopReason = "end_turn"
    usage: Usage = Usage()
    cut_after_events: int | None = None
    stream_error: StreamError | None = None
    hold: threading.Event | None = field(default=None, compare=False)
    pace_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"Unknown stop_reason {self.stop_reason!r}; use one of {sorted(STOP_REASONS)}.")
        has_tool_use = any(isinstance(block, ToolUse) for block in self.content)
        if self.stop_reason == "tool_use" and not has_tool_use:
            raise ValueError("stop_reason 'tool_use' needs at least one ToolUse block in the reply.")
        if has_tool_use and self.stop_reason not in ("tool_use", "max_tokens"):
            raise ValueError(
                "A reply with tool_use blocks stops with 'tool_use' (or 'max_tokens'), "
                f"not {self.stop_reason!r}."
            )
        ids = [block.id for block in self.content if isinstance(block, ToolUse) and block.id]
        if len(ids) != len(set(ids)):
            raise ValueError(f"Tool use ids must be unique within a reply: {ids}")

    # Building replies --------------------------------------------------------------------------------------

    @classmethod
    def of(
        cls, *content: Block | str, stop_reason: StopReason | None = None, usage: Usage | None = None
    ) -> Reply:
        """A reply of several blocks (strings become :class:`Text`); ``stop_reason`` follows the blocks."""
        blocks = tuple(Text(block) if isinstance(block, str) else block for block in content)
        if stop_reason is None:
            stop_reason = "tool_use" if any(isinstance(block, ToolUse) for block in blocks) else "end_turn"
        return cls(content=blocks, stop_reason=stop_reason, usage=usage or Usage())

    @classmethod
    def text(cls, text: str, *, stop_reason: StopReason = "end_turn", usage: Usage | None = None) -> Reply:
        """A text answer (streamed in several chunks)."""
        return cls.of(Text(text), stop_reason=stop_reason, usage=usage)

    @classmethod
    def tool_use(
        cls,
        name: str,
        input: Mapping[str, Any],
        *,
        text: str | None = None,
        id: str | None = None,
        usage: Usage | None = None,
    ) -> Reply:
        """A request to run one tool, optionally preceded by some text (as the model usually does)."""
        blocks: list[Block] = [Text(text)] if text else []
        blocks.append(ToolUse(name=name, input=dict(input), id=id))
        return cls.of(*blocks, usage=usage)

    @classmethod
    def bash(cls, command: str, *, text: str | None = None, id: str | None = None) -> Reply:
        """Run ``command`` with the bash tool (``{"type": "bash_20250124", "name": "bash"}``)."""
        return cls.tool_use("bash", {"command": command}, text=text, id=id)

    @classmethod
    def view(
        cls,
        path: str,
        *,
        view_range: tuple[int, int] | None = None,
        text: str | None = None,
        id: str | None = None,
    ) -> Reply:
        """View a file or directory with ``str_replace_based_edit_tool``."""
        tool_input: dict[str, Any] = {"command": "view", "path": path}
        if view_range is not None:
            tool_input["view_range"] = list(view_range)
        return cls.tool_use("str_replace_based_edit_tool", tool_input, text=text, id=id)

    @classmethod
    def create(cls, path: str, file_text: str, *, text: str | None = None, id: str | None = None) -> Reply:
        """Create (or overwrite) a file with ``str_replace_based_edit_tool``."""
        tool_input = {"command": "create", "path": path, "file_text": file_text}
        return cls.tool_use("str_replace_based_edit_tool", tool_input, text=text, id=id)

    @classmethod
    def str_replace(
        cls, path: str, old_str: str, new_str: str, *, text: str | None = None, id: str | None = None
    ) -> Reply:
        """Replace ``old_str`` (which must occur exactly once) with ``new_str`` in a file."""
        tool_input = {"command": "str_replace", "path": path, "old_str": old_str, "new_str": new_str}
        return cls.tool_use("str_replace_based_edit_tool", tool_input, text=text, id=id)

    @classmethod
    def insert(
        cls, path: str, insert_line: int, insert_text: str, *, text: str | None = None, id: str | None = None
    ) -> Reply:
        """Insert ``insert_text`` after line ``insert_line`` (0 inserts at the top) of a file."""
        tool_input = {
            "command": "insert",
            "path": path,
            "insert_line": insert_line,
            "insert_text": insert_text,
        }
        return cls.tool_use("str_replace_based_edit_tool", tool_input, text=text, id=id)

    @staticmethod
    def error(
        status: int,
        *,
        message: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> ErrorReply:
        """An HTTP error, typed as the real API types it for ``status``.

        For example 429 ``rate_limit_error`` (``retry_after`` seconds go in the ``retry-after`` header),
        529 ``overloaded_error``, 500 ``api_error``, 401 ``authentication_error``.
        """
        kind = error_type or ERROR_TYPES.get(status)
        if kind is None:
            raise ValueError(f"No known error type for HTTP {status}; pass error_type=... explicitly.")
        return ErrorReply(
            status=status,
            error_type=kind,
            message=message or DEFAULT_ERROR_MESSAGES.get(kind, kind),
            retry_after=retry_after,
        )

    # Variations --------------------------------------------------------------------------------------------

    def with_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
        cache_read_input_tokens: int | None = None,
    ) -> Reply:
        """The same reply reporting these token counts (the others are still computed)."""
        usage = Usage(input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens)
        return dataclasses.replace(self, usage=usage)

    def cut_off(self, after_events: int) -> Reply:
        """The same reply, but the connection drops after ``after_events`` events, before ``message_stop``."""
        if after_events < 0:
            raise ValueError("after_events cannot be negative.")
        return dataclasses.replace(self, cut_after_events=after_events)

    def with_stream_error(
        self, error_type: str = "overloaded_error", *, after_events: int, message: str | None = None
    ) -> Reply:
        """The same reply, but an ``event: error`` replaces the rest of the stream after ``after_events``."""
        if error_type not in ERROR_STATUSES:
            raise ValueError(f"Unknown error type {error_type!r}; use one of {sorted(ERROR_STATUSES)}.")
        return dataclasses.replace(self, stream_error=StreamError(after_events, error_type, message))

    def held_until(self, gate: threading.Event) -> Reply:
        """The same reply, sent only once ``gate`` is set (within :data:`HOLD_TIMEOUT_SECONDS`)."""
        return dataclasses.replace(self, hold=gate)

    def paced(self, seconds: float) -> Reply:
        """The same reply with ``seconds`` between streamed events (to watch progress updates happen)."""
        return dataclasses.replace(self, pace_seconds=seconds)


@dataclass(frozen=True)
class ToolResult:
    """A ``tool_result`` block as the client sent it, with its content flattened to text."""

    tool_use_id: str
    text: str
    is_error: bool


@dataclass(frozen=True)
class ReceivedRequest:
    """What a callable script step receives: the parsed request, with helpers to read it."""

    body: Mapping[str, Any]
    headers: Mapping[str, str]
    number: int
    """How many ``/v1/messages`` requests were scripted before this one (0 for the first)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The message history the request sent."""
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        """The names of the tools the request declared."""
        return [
            tool["name"] for tool in self.body.get("tools", []) if isinstance(tool, dict) and "name" in tool
        ]

    @property
    def system_text(self) -> str:
        """The system prompt as one string."""
        return system_text(self.body)

    def tool_results(self) -> dict[str, ToolResult]:
        """The ``tool_result`` blocks of the last user message, by ``tool_use_id``."""
        last = self.messages[-1] if self.messages else {}
        if last.get("role") != "user" or not isinstance(last.get("content"), list):
            return {}
        return {
            block["tool_use_id"]: ToolResult(
                tool_use_id=block["tool_use_id"],
                text=_content_text(block.get("content", "")),
                is_error=bool(block.get("is_error", False)),
            )
            for block in last["content"]
            if block.get("type") == "tool_result"
        }

    def tool_results_text(self) -> str:
        """All tool result text of the last user message, joined with newlines."""
        return "\n".join(result.text for result in self.tool_results().values())

    def last_user_text(self) -> str:
        """The text blocks of the last user message (tool results excluded)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")
        return ""


StepResult: TypeAlias = Reply | ErrorReply
Step: TypeAlias = Reply | ErrorReply | Callable[[ReceivedRequest], StepResult]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""


def system_text(body: Mapping[str, Any]) -> str:
    """The system prompt of a request body as one string (blocks joined with newlines)."""
    return _content_text(body.get("system", ""))


# --- Recording ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, as tests read it back (the credential headers are left out)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    status: int
    request_id: str
    step: int | None
    """The index of the script step that answered it (``None`` when validation or auth refused it)."""
    received_at: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The message history the request sent (empty when the body was not a JSON object)."""
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tool definitions the request sent."""
        return list(self.body.get("tools", [])) if isinstance(self.body, dict) else []

    @property
    def system_text(self) -> str:
        """The system prompt as one string."""
        return system_text(self.body) if isinstance(self.body, dict) else ""

    def cache_control_paths(self) -> list[str]:
        """Where the request put ``cache_control``: ``["tools.1", "system.0", "messages.2.content.0"]``."""
        return [path for path, _ in _cache_controls(self.body)] if isinstance(self.body, dict) else []


# --- Validation ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A refusal with the real API's status, error type and message."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or ERROR_TYPES[status]
        self.message = message


def _invalid(message: str) -> ApiError:
    return ApiError(400, message)


def _allowed_keys(params: Any) -> frozenset[str]:
    return frozenset(params.__required_keys__ | params.__optional_keys__)


def _request_keys() -> tuple[frozenset[str], frozenset[str]]:
    """Top-level fields the real API accepts, as the SDK's request types list them (others are a 400)."""
    from anthropic.types import message_count_tokens_params, message_create_params

    create = _allowed_keys(message_create_params.MessageCreateParamsStreaming)
    count = _allowed_keys(message_count_tokens_params.MessageCountTokensParams)
    return create, count


def _cache_controls(body: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every ``cache_control`` in a request, with where it is, in the API's prefix order."""
    if "cache_control" in body and body["cache_control"] is not None:
        yield "cache_control", body["cache_control"]
    for index, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict) and tool.get("cache_control") is not None:
            yield f"tools.{index}", tool["cache_control"]
    system = body.get("system")
    if isinstance(system, list):
        for index, block in enumerate(system):
            if isinstance(block, dict) and block.get("cache_control") is not None:
                yield f"system.{index}", block["cache_control"]
    for m_index, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for b_index, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("cache_control") is not None:
                yield f"messages.{m_index}.content.{b_index}", block["cache_control"]
            inner = block.get("content")
            if block.get("type") == "tool_result" and isinstance(inner, list):
                for i_index, inner_block in enumerate(inner):
                    if isinstance(inner_block, dict) and inner_block.get("cache_control") is not None:
                        path = f"messages.{m_index}.content.{b_index}.content.{i_index}"
                        yield path, inner_block["cache_control"]


def _known_models() -> frozenset[str]:
    """The model ids the installed SDK knows (its ``Model`` literal) plus the deprecated ones it lists."""
    from anthropic._data import DEPRECATED_MODELS
    from anthropic.types import Model

    literal = next(arg for arg in typing.get_args(Model) if typing.get_origin(arg) is Literal)
    return frozenset(typing.get_args(literal)) | frozenset(DEPRECATED_MODELS)


def _retirement_dates() -> dict[str, datetime.date]:
    """Deprecated model -> the day it reaches end-of-life (from the SDK's ``DEPRECATED_MODELS``)."""
    from anthropic._data import DEPRECATED_MODELS

    dates = {}
    for model, when in DEPRECATED_MODELS.items():
        cleaned = re.sub(r"(\d+)(st|nd|rd|th)", r"\1", when)
        with contextlib.suppress(ValueError):
            dates[model] = datetime.datetime.strptime(cleaned, "%B %d, %Y").date()
    return dates


def _max_output_tokens(model: str) -> int | None:
    matches = [prefix for prefix in MAX_OUTPUT_TOKENS if model.startswith(prefix)]
    return MAX_OUTPUT_TOKENS[max(matches, key=len)] if matches else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RequestValidator:
    """Checks a ``/v1/messages`` (or ``count_tokens``) body as the real API does, raising :class:`ApiError`.

    Wordings come from the real API where they are on record; the few that are not (marked ``ours``) still
    name the field and the rule.
    """

    def __init__(self, extra_models: Iterable[str] = ()) -> None:
        self._create_keys, self._count_keys = _request_keys()
        self._models = _known_models() | frozenset(extra_models)

    def validate(self, body: Any, *, count_tokens: bool = False) -> None:
        """Raise :class:`ApiError` for the first rule ``body`` breaks (count_tokens needs no max_tokens)."""
        if not isinstance(body, dict):
            raise _invalid("Request body must be a JSON object.")  # ours
        allowed = self._count_keys if count_tokens else self._create_keys
        for key in body:
            if key not in allowed:
                raise _invalid(f"{key}: Extra inputs are not permitted")
        required = ("model", "messages") if count_tokens else ("max_tokens", "messages", "model")
        for key in required:
            if key not in body:
                raise _invalid(f"{key}: Field required")
        self._model(body["model"])
        if not count_tokens:
            self._max_tokens(body["max_tokens"], body["model"])
            if "stream" in body and not isinstance(body["stream"], bool):
                raise _invalid("stream: Input should be a valid boolean")
        self._sampling(body)
        self._system(body.get("system"))
        tool_names = self._tools(body.get("tools"))
        self._tool_choice(body.get("tool_choice"), tool_names, "tools" in body)
        self._messages(body["messages"], has_tools="tools" in body)
        self._prefill(body["model"], body["messages"])
        self._cache_control(body)

    # Fields ------------------------------------------------------------------------------------------------

    def _model(self, model: Any) -> None:
        if not isinstance(model, str):
            raise _invalid("model: Input should be a valid string")
        if model not in self._models:
            raise ApiError(404, f"model: {model}")
        retired_on = _retirement_dates().get(model)
        if retired_on is not None and datetime.date.today() >= retired_on:
            raise ApiError(404, f"model: {model}")

    @staticmethod
    def _prefill(model: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """A final assistant message (prefill) only for the models that still support it."""
        if messages[-1]["role"] == "assistant" and not model.startswith(PREFILL_MODEL_PREFIXES):
            raise _invalid(
                "This model does not support assistant message prefill. The conversation must end with a "
                "user message."
            )

    @staticmethod
    def _max_tokens(max_tokens: Any, model: str) -> None:
        if not _is_int(max_tokens):
            raise _invalid("max_tokens: Input should be a valid integer")
        if max_tokens < 0:  # 0 is allowed: it warms the prompt cache without generating anything
            raise _invalid("max_tokens: Input should be greater than or equal to 0")
        cap = _max_output_tokens(model)
        if cap is not None and max_tokens > cap:
            raise _invalid(
                f"max_tokens: {max_tokens} > {cap}, which is the maximum allowed number of output tokens "
                f"for {model}"
            )

    @staticmethod
    def _sampling(body: Mapping[str, Any]) -> None:
        for key, high in (("temperature", 1.0), ("top_p", 1.0)):
            if key in body:
                value = body[key]
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise _invalid(f"{key}: Input should be a valid number")
                if value < 0:
                    raise _invalid(f"{key}: Input should be greater than or equal to 0")
                if value > high:
                    raise _invalid(f"{key}: Input should be less than or equal to {high:g}")

    def _system(self, system: Any) -> None:
        if system is None or isinstance(system, str):
            return
        if not isinstance(system, list):
            raise _invalid("system: Input should be a valid string or a list of text blocks")  # ours
        for index, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _invalid(f"system.{index}.type: Input should be 'text'")
            self._text_block(block, "system")

    @staticmethod
    def _text_block(block: Mapping[str, Any], where: str) -> None:
        text = block.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{where}: text content blocks need a string `text`")  # ours
        if text == "":
            if block.get("cache_control") is not None:
                raise _invalid("cache_control cannot be set for empty text blocks")
            raise _invalid(f"{where}: text content blocks must be non-empty")
        if not text.strip():
            raise _invalid(f"{where}: text content blocks must contain non-whitespace text")

    @staticmethod
    def _tools(tools: Any) -> list[str]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise _invalid("tools: Input should be a valid list")
        names: list[str] = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid(f"tools.{index}: Input should be a valid dictionary")
            kind = tool.get("type")
            if kind is None or kind == "custom":
                name = tool.get("name")
                if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
                    raise _invalid(
                        f"tools.{index}.custom.name: String should match pattern "
                        f"'{TOOL_NAME_PATTERN.pattern}'"
                    )
                schema = tool.get("input_schema")
                if schema is None:
                    raise _invalid(f"tools.{index}.custom.input_schema: Field required")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise _invalid(f"tools.{index}.custom.input_schema.type: Input should be 'object'")
            elif kind in ANTHROPIC_TOOL_NAMES:
                name = tool.get("name")
                expected = ANTHROPIC_TOOL_NAMES[kind]
                if name != expected:
                    raise _invalid(f"tools.{index}.{kind}.name: Input should be '{expected}'")
            else:
                tags = ", ".join(f"'{tag}'" for tag in ("custom", *ANTHROPIC_TOOL_NAMES))
                raise _invalid(
                    f"tools.{index}: Input tag '{kind}' found using 'type' does not match any of the "
                    f"expected tags: {tags}"
                )
            names.append(name)
        if len(names) != len(set(names)):
            raise _invalid("tools: Tool names must be unique.")
        return names

    @staticmethod
    def _tool_choice(choice: Any, tool_names: Sequence[str], has_tools: bool) -> None:
        if choice is None:
            return
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise _invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and choice.get("name") not in tool_names:
            raise _invalid(f"tool_choice.name: Tool '{choice.get('name')}' not found in tools")  # ours
        if choice["type"] in ("any", "tool") and not has_tools:
            raise _invalid("tool_choice may only be specified while providing tools.")

    def _messages(self, messages: Any, *, has_tools: bool) -> None:
        if not isinstance(messages, list):
            raise _invalid("messages: Input should be a valid list")
        if not messages:
            raise _invalid("messages: at least one message is required")
        if len(messages) > MAX_MESSAGES:
            raise _invalid(f"messages: at most {MAX_MESSAGES} messages are allowed")  # ours
        last = len(messages) - 1
        for index, message in enumerate(messages):
            self._message_shape(index, message, is_last=index == last)
        if messages[0]["role"] != "user":
            raise _invalid('messages: first message must use the "user" role')
        uses_tools = any(
            isinstance(message["content"], list)
            and any(block.get("type") in ("tool_use", "tool_result") for block in message["content"])
            for message in messages
        )
        if uses_tools and not has_tools:
            raise _invalid("Requests which include `tool_use` or `tool_result` blocks must define tools.")
        self._tool_pairing(messages)
        final = messages[last]
        if final["role"] == "assistant":
            content = final["content"]
            final_text = content if isinstance(content, str) else ""
            if isinstance(content, list) and content and content[-1].get("type") == "text":
                final_text = content[-1].get("text", "")
            if final_text and final_text != final_text.rstrip():
                raise _invalid("messages: final assistant content cannot end with trailing whitespace")

    def _message_shape(self, index: int, message: Any, *, is_last: bool) -> None:
        if not isinstance(message, dict):
            raise _invalid(f"messages.{index}: Input should be a valid dictionary")
        role = message.get("role")
        if role is None:
            raise _invalid(f"messages.{index}.role: Field required")
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"messages.{index}.content: Field required")
        extra = set(message) - {"role", "content"}
        if extra:
            raise _invalid(f"messages.{index}.{sorted(extra)[0]}: Extra inputs are not permitted")
        content = message["content"]
        may_be_empty = is_last and role == "assistant"  # an empty final assistant message is an empty prefill
        if content in ("", []) and not may_be_empty:
            raise _invalid(
                f"messages.{index}: all messages must have non-empty content except for the optional final "
                "assistant message"
            )
        if isinstance(content, str):
            if content and not content.strip():
                raise _invalid("messages: text content blocks must contain non-whitespace text")
            return
        if not isinstance(content, list):
            raise _invalid(
                f"messages.{index}.content: Input should be a valid string or a list of content blocks"
            )
        allowed = USER_BLOCK_TYPES if role == "user" else ASSISTANT_BLOCK_TYPES
        for b_index, block in enumerate(content):
            where = f"messages.{index}.content.{b_index}"
            if not isinstance(block, dict) or "type" not in block:
                raise _invalid(f"{where}.type: Field required")
            kind = block["type"]
            if kind not in USER_BLOCK_TYPES | ASSISTANT_BLOCK_TYPES:
                raise _invalid(
                    f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
                )
            if kind not in allowed:
                raise _invalid(f"{where}: `{kind}` blocks are not allowed in `{role}` messages")  # ours
            if kind == "text":
                self._text_block(block, "messages")
            elif kind == "tool_use":
                self._tool_use_block(block, where)
            elif kind == "tool_result":
                self._tool_result_block(block, where)

    @staticmethod
    def _tool_use_block(block: Mapping[str, Any], where: str) -> None:
        for key in ("id", "name", "input"):
            if key not in block:
                raise _invalid(f"{where}.tool_use.{key}: Field required")
        if not isinstance(block["id"], str) or not TOOL_USE_ID_PATTERN.match(block["id"]):
            raise _invalid(
                f"{where}.tool_use.id: String should match pattern '{TOOL_USE_ID_PATTERN.pattern}'"
            )
        if not isinstance(block["input"], dict):
            raise _invalid(f"{where}.tool_use.input: Input should be a valid dictionary")

    def _tool_result_block(self, block: Mapping[str, Any], where: str) -> None:
        if "tool_use_id" not in block:
            raise _invalid(f"{where}.tool_result.tool_use_id: Field required")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise _invalid(f"{where}.tool_result.is_error: Input should be a valid boolean")
        inner = block.get("content")
        if inner is None or isinstance(inner, str):
            return
        if not isinstance(inner, list):
            raise _invalid(f"{where}.tool_result.content: Input should be a valid string or list")
        for i_index, inner_block in enumerate(inner):
            if not isinstance(inner_block, dict) or inner_block.get("type") not in (
                "text",
                "image",
                "document",
                "search_result",
                "tool_reference",
            ):
                raise _invalid(
                    f"{where}.tool_result.content.{i_index}.type: Input should be a valid content type"
                )
            if inner_block["type"] == "text":
                self._text_block(inner_block, "messages")

    @staticmethod
    def _tool_pairing(messages: Sequence[Mapping[str, Any]]) -> None:
        """Every assistant ``tool_use`` is answered by a ``tool_result`` at the start of the next message, and
        every ``tool_result`` answers a ``tool_use`` of the message just before it (the real wordings)."""
        seen_ids: set[str] = set()
        previous_ids: list[str] = []
        for index, message in enumerate(messages):
            content = message["content"] if isinstance(message["content"], list) else []
            if message["role"] == "user":
                for b_index, block in enumerate(content):
                    if block.get("type") == "tool_result" and block["tool_use_id"] not in previous_ids:
                        raise _invalid(
                            f"messages.{index}.content.{b_index}: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block must "
                            "have a corresponding `tool_use` block in the previous message."
                        )
                previous_ids = []
                continue
            ids = [block["id"] for block in content if block.get("type") == "tool_use"]
            if seen_ids & set(ids) or len(ids) != len(set(ids)):
                raise _invalid("messages: `tool_use` ids must be unique")
            seen_ids.update(ids)
            previous_ids = ids
            if not ids:
                continue
            following = messages[index + 1] if index + 1 < len(messages) else None
            following_content: list[Any] = []
            if (
                following is not None
                and following["role"] == "user"
                and isinstance(following["content"], list)
            ):
                following_content = following["content"]
            answered = {b["tool_use_id"] for b in following_content if b.get("type") == "tool_result"}
            missing = [tool_id for tool_id in ids if tool_id not in answered]
            if missing:
                raise _invalid(
                    f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message."
                )
            leading = 0
            for block in following_content:
                if block.get("type") != "tool_result":
                    break
                leading += 1
            if leading < len(ids):
                raise _invalid(
                    f"messages.{index + 1}: Did not find {len(ids)} `tool_result` block(s) at the beginning "
                    "of this message. Messages following `tool_use` blocks must begin with a matching number "
                    "of `tool_result` blocks."
                )

    @staticmethod
    def _cache_control(body: Mapping[str, Any]) -> None:
        found = list(_cache_controls(body))
        for path, control in found:
            if not isinstance(control, dict) or control.get("type") != "ephemeral":
                raise _invalid(f"{path}.cache_control.type: Input should be 'ephemeral'")
            extra = set(control) - {"type", "ttl"}
            if extra:
                raise _invalid(f"{path}.cache_control.{sorted(extra)[0]}: Extra inputs are not permitted")
            if "ttl" in control and control["ttl"] not in CACHE_CONTROL_TTLS:
                raise _invalid(f"{path}.cache_control.ttl: Input should be '5m' or '1h'")
        if len(found) > MAX_CACHE_BREAKPOINTS:
            raise _invalid(
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(found)}."
            )


# --- Token accounting and the prompt cache ------------------------------------------------------------------


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_cache_control(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(item) for item in value]
    return value


def _prefix_segments(body: Mapping[str, Any]) -> list[tuple[Any, bool]]:
    """The request cut into the pieces the cache works on (tools, system, then messages), each with whether it
    carries a breakpoint."""
    segments: list[tuple[Any, bool]] = []
    for tool in body.get("tools") or []:
        segments.append((tool, tool.get("cache_control") is not None))
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append((system, False))
    elif isinstance(system, list):
        segments.extend((block, block.get("cache_control") is not None) for block in system)
    for message in body.get("messages") or []:
        content = message["content"]
        if isinstance(content, str):
            segments.append(({"role": message["role"], "text": content}, False))
            continue
        for block in content:
            marked = block.get("cache_control") is not None or any(
                isinstance(inner, dict) and inner.get("cache_control") is not None
                for inner in (block.get("content") if isinstance(block.get("content"), list) else [])
            )
            segments.append(({"role": message["role"], "block": block}, marked))
    if body.get("cache_control") is not None and segments:  # automatic caching marks the last block
        segments[-1] = (segments[-1][0], True)
    return segments


@dataclass(frozen=True)
class InputUsage:
    """How the input tokens of one request split into uncached, cache-written and cache-read tokens."""

    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    @property
    def total(self) -> int:
        """All input tokens, as ``count_tokens`` reports them."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


class PromptCache:
    """A plausible prompt cache: a prefix up to a breakpoint is written once, then read by later requests.

    A later request reads the longest cached prefix ending at one of its breakpoints or up to 20 blocks before
    one (as the real lookback does); its last breakpoint's prefix is written when long enough.
    """

    #: The real cache looks back at most this many blocks before a breakpoint for an earlier cached prefix.
    LOOKBACK_BLOCKS: Final = 20

    def __init__(self, min_cacheable_tokens: int = MIN_CACHEABLE_TOKENS) -> None:
        self.min_cacheable_tokens = min_cacheable_tokens
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every cached prefix (as if the five-minute lifetime had passed)."""
        with self._lock:
            self._prefixes.clear()

    def account(self, body: Mapping[str, Any], *, write: bool = True) -> InputUsage:
        """Split the request's input tokens; with ``write``, cache its breakpoints' prefixes for later."""
        segments = _prefix_segments(body)
        digest = hashlib.sha256(str(body.get("model")).encode())
        keys: list[str] = []
        totals: list[int] = []
        running = 0
        for segment, _ in segments:
            digest.update(json.dumps(_without_cache_control(segment), sort_keys=True).encode())
            keys.append(digest.copy().hexdigest())
            running += _estimate_tokens(_without_cache_control(segment))
            totals.append(running)
        total = running
        breakpoints = [index for index, (_, marked) in enumerate(segments) if marked]
        with self._lock:
            read = 0
            for point in breakpoints:
                for index in range(point, max(-1, point - self.LOOKBACK_BLOCKS), -1):
                    if keys[index] in self._prefixes:
                        read = max(read, totals[index])
                        break
            created = 0
            if breakpoints:
                last = breakpoints[-1]
                if totals[last] >= self.min_cacheable_tokens and totals[last] > read:
                    created = totals[last] - read
                if write:
                    for point in breakpoints:
                        if totals[point] >= self.min_cacheable_tokens:
                            self._prefixes.add(keys[point])
        return InputUsage(total - read - created, created, read)


def _output_tokens(reply: Reply) -> int:
    tokens = 0
    for block in reply.content:
        tokens += (
            _estimate_tokens(block.text) if isinstance(block, Text) else 20 + _estimate_tokens(block.input)
        )
    return max(1, tokens)


# --- Server-Sent Events -------------------------------------------------------------------------------------


def _text_pieces(text: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for word in re.findall(r"\s*\S+\s*|\s+", text):
        current += word
        if len(current) >= TEXT_DELTA_CHARS:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces or [text]


def _json_pieces(value: Mapping[str, Any]) -> list[str]:
    text = json.dumps(value, ensure_ascii=False)
    return [text[start : start + JSON_DELTA_CHARS] for start in range(0, len(text), JSON_DELTA_CHARS)]


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _stream_events(message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence the real API streams for a finished ``message``."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            deltas = [{"type": "text_delta", "text": piece} for piece in _text_pieces(block["text"])]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opening},
                )
            )
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [
                {"type": "input_json_delta", "partial_json": piece} for piece in _json_pieces(block["input"])
            ]
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    if not message["content"]:
        events.append(("ping", {"type": "ping"}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {
                    key: usage[key]
                    for key in (
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                        "output_tokens",
                    )
                },
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --- The server ---------------------------------------------------------------------------------------------


class ScriptError(Exception):
    """The script cannot answer a request (exhausted, wrong tool, failing callable): a mistake in the test."""


def _declared_tools(body: Mapping[str, Any]) -> dict[str, str]:
    """Tool name -> type (``custom`` for client-defined tools) of the tools a request declares."""
    return {tool["name"]: tool.get("type") or "custom" for tool in body.get("tools") or []}


def _check_tool_input(tool_use: ToolUse, kind: str, body: Mapping[str, Any]) -> None:
    tool_input = tool_use.input
    if kind.startswith("bash_"):
        if not isinstance(tool_input.get("command"), str) and tool_input.get("restart") is not True:
            raise ScriptError(
                f"bash tool_use needs {{'command': '...'}} (or {{'restart': true}}), got {dict(tool_input)}."
            )
    elif kind.startswith("text_editor_"):
        commands = TEXT_EDITOR_COMMANDS[tool_use.name]
        command = str(tool_input.get("command"))
        if command not in commands:
            raise ScriptError(
                f"{tool_use.name} ({kind}) has no command {command!r}; it knows {sorted(commands)}."
            )
        missing = [key for key in commands[command] if key not in tool_input]
        if missing:
            raise ScriptError(f"{tool_use.name} command {command!r} needs {missing}, got {dict(tool_input)}.")
    elif kind == "custom":
        tool = next(tool for tool in body["tools"] if tool["name"] == tool_use.name)
        missing = [key for key in tool["input_schema"].get("required", []) if key not in tool_input]
        if missing:
            raise ScriptError(
                f"tool {tool_use.name!r} requires {missing} by its input_schema, but the script gives "
                f"{dict(tool_input)}."
            )


class ScriptedClaude:
    """The stand-in server. Use it as a context manager, or call :meth:`start` and :meth:`stop`.

    Parameters
    ----------
    script:
        The first steps (more can be added with :meth:`load` or :meth:`add`).
    api_key:
        The only key accepted (``x-api-key`` or ``Authorization: Bearer``), by default a new
        ``sk-ant-test-...``.
    min_cacheable_tokens:
        Prefixes shorter than this are not cached (the real minimum is 1,024 tokens for Sonnet and Opus).
    max_request_bytes:
        Bodies over this size are refused with 413 ``request_too_large`` (32 MB, as the real API).
    extra_models:
        Model ids to accept besides those the installed SDK knows (others get 404 ``not_found_error``).
    """

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        min_cacheable_tokens: int = MIN_CACHEABLE_TOKENS,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        extra_models: Iterable[str] = (),
    ) -> None:
        self.api_key = api_key or API_KEY_PREFIX + secrets.token_urlsafe(24)
        self._host = host
        self._port = port
        self._max_request_bytes = max_request_bytes
        self.cache = PromptCache(min_cacheable_tokens)
        self._validator = RequestValidator(extra_models)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._script: deque[Step] = deque(script)
        self._steps_used = 0
        self._requests: list[RecordedRequest] = []
        self._script_errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = threading.Event()

    # Life cycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``base_url``) or ``ANTHROPIC_BASE_URL``."""
        if self._runner is None:
            raise RuntimeError("ScriptedClaude is not started: call start() or use it as a context manager.")
        return f"http://{self._host}:{self._port}"

    def start(self) -> Self:
        """Start serving on its own event loop in a background thread; returns itself once listening."""
        if self._thread is not None:
            raise RuntimeError("ScriptedClaude is already started.")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._serve_forever, args=(loop,), name="scripted-claude", daemon=True
        )
        self._loop, self._thread = loop, thread
        self._stopping.clear()
        thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start_site(), loop)
        try:
            future.result(timeout=SERVER_THREAD_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        log.debug("scripted_claude.started", url=self.url)
        return self

    def stop(self) -> None:
        """Stop serving (in-flight held replies answer 500) and join the thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping.set()
        runner = self._runner
        if runner is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=SERVER_THREAD_TIMEOUT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=SERVER_THREAD_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise RuntimeError(
                f"ScriptedClaude's server thread did not stop within {SERVER_THREAD_TIMEOUT_SECONDS}s."
            )
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def _serve_forever(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=self._max_request_bytes, middlewares=[self._never_hang])
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._port = runner.addresses[0][1]
        self._runner = runner

    # The script -------------------------------------------------------------------------------------------

    def load(self, script: Iterable[Step]) -> None:
        """Replace the steps not used yet with ``script``."""
        with self._lock:
            self._script = deque(script)

    def add(self, *steps: Step) -> None:
        """Append steps to the script."""
        with self._lock:
            self._script.extend(steps)

    @property
    def remaining(self) -> int:
        """How many scripted steps are still unused."""
        with self._lock:
            return len(self._script)

    @property
    def script_errors(self) -> list[str]:
        """What went wrong with the script (each was also answered with a 500 naming it)."""
        with self._lock:
            return list(self._script_errors)

    def assert_script_done(self) -> None:
        """Fail if steps are left over or the script could not answer some request."""
        with self._lock:
            problems = list(self._script_errors)
            if self._script:
                problems.append(f"{len(self._script)} scripted step(s) were never requested.")
        if problems:
            raise AssertionError("Scripted Claude: " + " ".join(problems))

    # What tests read --------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /v1/messages`` requests."""
        return [request for request in self.requests if request.path == "/v1/messages"]

    def wait_for_requests(self, count: int, *, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` ``/v1/messages`` requests were answered; fail after ``timeout`` seconds."""

        def enough() -> bool:
            return sum(1 for r in self._requests if r.path == "/v1/messages") >= count

        with self._changed:
            if not self._changed.wait_for(enough, timeout=timeout):
                seen = sum(1 for r in self._requests if r.path == "/v1/messages")
                raise TimeoutError(
                    f"Scripted Claude got {seen} of {count} expected /v1/messages requests in {timeout}s."
                )
        return self.message_requests

    def environment(self) -> dict[str, str]:
        """Environment variables that point the SDK (or a worker process) at this server."""
        return {"ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": self.api_key}

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        """A real sync SDK client pointed at this server (extra keyword arguments go to the client)."""
        import anthropic

        return anthropic.Anthropic(base_url=self.url, api_key=self.api_key, **kwargs)

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """A real async SDK client pointed at this server (extra keyword arguments go to the client)."""
        import anthropic

        return anthropic.AsyncAnthropic(base_url=self.url, api_key=self.api_key, **kwargs)

    # Request handling -------------------------------------------------------------------------------------

    def _record(
        self, request: web.Request, body: Any, status: int, request_id: str, step: int | None
    ) -> None:
        record = RecordedRequest(
            request.method,
            request.path,
            _public_headers(request),
            body,
            status,
            request_id,
            step,
            time.time(),
        )
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()

    def _check_headers(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if key is None and authorization.lower().startswith("bearer "):
            key = authorization[len("bearer ") :].strip()
        if not key:
            raise ApiError(401, "x-api-key header is required")
        if not secrets.compare_digest(key, self.api_key):
            raise ApiError(401, "invalid x-api-key")
        if not request.headers.get(ANTHROPIC_VERSION_HEADER):
            raise _invalid("anthropic-version: header is required")

    async def _read_body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as error:
            raise ApiError(413, DEFAULT_ERROR_MESSAGES["request_too_large"]) from error
        try:
            return json.loads(raw)
        except ValueError as error:
            raise _invalid(f"Request body is not valid JSON: {error}") from error  # ours

    @staticmethod
    def _error_response(
        error: ApiError | ErrorReply, request_id: str, *, retry: bool | None = None
    ) -> web.Response:
        reply = (
            error
            if isinstance(error, ErrorReply)
            else ErrorReply(error.status, error.error_type, error.message)
        )
        headers = {"request-id": request_id}
        if reply.retry_after is not None:
            seconds = reply.retry_after
            headers["retry-after"] = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
        if retry is not None:
            headers["x-should-retry"] = "true" if retry else "false"
        return web.json_response(reply.body(request_id), status=reply.status, headers=headers)

    @web.middleware
    async def _never_hang(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A bug in the stand-in answers a 500 that names it and is not retried (not a bare, retried 500)."""
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as error:
            message = f"{SCRIPT_ERROR_PREFIX}the stand-in itself failed on {request.path}: {error!r}"
            log.exception("scripted_claude.internal_error")
            with self._lock:
                self._script_errors.append(message)
            request_id = _new_id("req_011C")
            self._record(request, None, 500, request_id, None)
            return self._error_response(ErrorReply(500, "api_error", message), request_id, retry=False)

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        request_id = _new_id("req_011C")
        self._record(request, None, 404, request_id, None)
        return self._error_response(ApiError(404, "Not Found"), request_id)

    async def _handle_count_tokens(self, request: web.Request) -> web.Response:
        request_id = _new_id("req_011C")
        body: Any = None
        try:
            self._check_headers(request)
            body = await self._read_body(request)
            self._validator.validate(body, count_tokens=True)
        except ApiError as error:
            self._record(request, body, error.status, request_id, None)
            return self._error_response(error, request_id)
        tokens = self.cache.account(body, write=False).total
        self._record(request, body, 200, request_id, None)
        return web.json_response({"input_tokens": tokens}, headers={"request-id": request_id})

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        request_id = _new_id("req_011C")
        body: Any = None
        try:
            self._check_headers(request)
            body = await self._read_body(request)
            self._validator.validate(body)
        except ApiError as error:
            self._record(request, body, error.status, request_id, None)
            return self._error_response(error, request_id)

        with self._lock:
            step_index = self._steps_used
            self._steps_used += 1
            step = self._script.popleft() if self._script else None
        try:
            result = self._run_step(step, step_index, body, request)
        except ScriptError as error:
            return self._script_failure(request, body, request_id, f"step {step_index}: {error}", step_index)
        if isinstance(result, ErrorReply):
            self._record(request, body, result.status, request_id, step_index)
            return self._error_response(result, request_id)

        message = self._message(result, body, self.cache.account(body))
        self._record(request, body, 200, request_id, step_index)
        if result.hold is not None and not await self._wait_for_gate(result.hold):
            problem = (
                f"step {step_index} was held until an event that was not set within {HOLD_TIMEOUT_SECONDS}s "
                "(or the server stopped): set the event passed to held_until()."
            )
            return self._script_failure(request, body, request_id, problem, step_index, recorded=True)
        if body.get("stream"):
            return await self._stream(request, result, message, request_id)
        return await self._respond_json(request, result, message, request_id)

    def _script_failure(
        self,
        request: web.Request,
        body: Any,
        request_id: str,
        problem: str,
        step_index: int,
        *,
        recorded: bool = False,
    ) -> web.Response:
        """Answer a request the script cannot answer: 500 that the SDK will not retry, and remember why."""
        message = SCRIPT_ERROR_PREFIX + problem
        log.warning("scripted_claude.script_error", error=message)
        with self._changed:
            self._script_errors.append(message)
            if recorded:  # a held request was recorded on arrival as a 200: correct what it finally got
                self._requests = [
                    dataclasses.replace(r, status=500) if r.request_id == request_id else r
                    for r in self._requests
                ]
        if not recorded:
            self._record(request, body, 500, request_id, step_index)
        return self._error_response(ErrorReply(500, "api_error", message), request_id, retry=False)

    def _run_step(
        self, step: Step | None, step_index: int, body: Mapping[str, Any], request: web.Request
    ) -> StepResult:
        if step is None:
            raise ScriptError(
                f"the script is exhausted: this request arrived after all {step_index} scripted step(s) "
                "were used. Add a step for it (claude.add(...) or claude.load([...])), or find out why the "
                "code under test made one more call than expected."
            )
        if callable(step) and not isinstance(step, Reply | ErrorReply):
            received = ReceivedRequest(body=body, headers=_public_headers(request), number=step_index)
            try:
                result = step(received)
            except Exception as error:
                raise ScriptError(f"the callable step raised {error!r}") from error
            if not isinstance(result, Reply | ErrorReply):
                raise ScriptError(f"a callable step must return a Reply or an ErrorReply, not {result!r}")
        else:
            result = step
        if isinstance(result, Reply):
            declared = _declared_tools(body)
            for block in result.content:
                if not isinstance(block, ToolUse):
                    continue
                if block.name not in declared:
                    raise ScriptError(
                        f"the reply uses tool {block.name!r}, but the request declares only "
                        f"{sorted(declared)}. The real model can only call declared tools: declare it in "
                        "`tools` or fix the script."
                    )
                kind = declared[block.name]
                if kind.startswith(SERVER_TOOL_PREFIXES):
                    raise ScriptError(
                        f"{block.name!r} is a server tool ({kind}); the stand-in does not script those."
                    )
                _check_tool_input(block, kind, body)
        return result

    async def _wait_for_gate(self, gate: threading.Event) -> bool:
        """Wait for a held step's gate; False when it was not set in time or the server is stopping."""
        deadline = time.monotonic() + HOLD_TIMEOUT_SECONDS
        while not gate.is_set():
            if self._stopping.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(HOLD_POLL_SECONDS)
        return True

    @staticmethod
    def _message(reply: Reply, body: Mapping[str, Any], usage: InputUsage) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for block in reply.content:
            if isinstance(block, Text):
                content.append({"type": "text", "text": block.text})
            else:
                tool_id = block.id or _new_id("toolu_01", 22)
                content.append(
                    {"type": "tool_use", "id": tool_id, "name": block.name, "input": dict(block.input)}
                )
        scripted = reply.usage
        return {
            "id": _new_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _first(scripted.input_tokens, usage.input_tokens),
                "cache_creation_input_tokens": _first(
                    scripted.cache_creation_input_tokens, usage.cache_creation_input_tokens
                ),
                "cache_read_input_tokens": _first(
                    scripted.cache_read_input_tokens, usage.cache_read_input_tokens
                ),
                "output_tokens": _first(scripted.output_tokens, _output_tokens(reply)),
                "service_tier": "standard",
            },
        }

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _respond_json(
        self, request: web.Request, reply: Reply, message: Mapping[str, Any], request_id: str
    ) -> web.StreamResponse:
        if reply.cut_after_events is not None:
            self._abort(request)
            raise asyncio.CancelledError("scripted connection cut")
        if reply.stream_error is not None:
            error = reply.stream_error
            status = ERROR_STATUSES[error.error_type]
            text = error.message or DEFAULT_ERROR_MESSAGES[error.error_type]
            return self._error_response(ErrorReply(status, error.error_type, text), request_id)
        return web.json_response(message, headers={"request-id": request_id})

    async def _stream(
        self, request: web.Request, reply: Reply, message: Mapping[str, Any], request_id: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": request_id,
            },
        )
        await response.prepare(request)
        for count, (event, data) in enumerate(_stream_events(message)):
            if reply.cut_after_events is not None and count >= reply.cut_after_events:
                self._abort(request)
                raise asyncio.CancelledError("scripted connection cut")
            if reply.stream_error is not None and count >= reply.stream_error.after_events:
                error = reply.stream_error
                text = error.message or DEFAULT_ERROR_MESSAGES[error.error_type]
                body = ErrorReply(ERROR_STATUSES[error.error_type], error.error_type, text).body(request_id)
                await response.write(_sse("error", body))
                break
            await response.write(_sse(event, data))
            if reply.pace_seconds:
                await asyncio.sleep(reply.pace_seconds)
        await response.write_eof()
        return response


def _public_headers(request: web.Request) -> dict[str, str]:
    """The request's headers, lower-cased, without the credential."""
    return {
        name.lower(): value
        for name, value in request.headers.items()
        if name.lower() not in ("x-api-key", "authorization")
    }


def _first(scripted: int | None, computed: int) -> int:
    return computed if scripted is None else scripted


__all__ = [
    "API_KEY_PREFIX",
    "MAX_CACHE_BREAKPOINTS",
    "ApiError",
    "Block",
    "ErrorReply",
    "PromptCache",
    "ReceivedRequest",
    "RecordedRequest",
    "Reply",
    "RequestValidator",
    "ScriptError",
    "ScriptedClaude",
    "Step",
    "StreamError",
    "Text",
    "ToolResult",
    "ToolUse",
    "Usage",
    "system_text",
]
