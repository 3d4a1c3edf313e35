"""Claude, as the worker calls it: one streamed model step at a time, with retries and a circuit breaker.

- **Streaming** (``client.messages.stream``): text and tool-call starts are reported as they arrive, so
  the status message can say "thinking", "writing the answer", "preparing `bash`".
- **Prompt caching**: ``cache_control`` on the last tool and on the system prompt here; the history's
  two breakpoints come from :func:`peerbot.worker.history.with_cache_breakpoints` (four in all, the API's
  maximum).
- **Retries** (tenacity): 429, 529 and other 5xx answers, errors sent inside a stream, and dropped
  connections are retried with exponential backoff and jitter, waiting what ``retry-after`` asks for when
  the API says; never past the turn's deadline. The SDK's own retries are off so there is one policy.
- **Circuit breaker**: after :data:`BREAKER_THRESHOLD` failures in a row the breaker opens and every call
  fails at once with one clear :class:`~peerbot.worker.errors.ClaudeFailure`, so an outage is reported to
  the person once instead of being hammered.

Errors retries cannot fix (a refused key, an unknown model, an empty credit balance, a request the API
rejects) become a :class:`ClaudeFailure` saying what to do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from peerbot.resilience import CircuitBreaker as SharedCircuitBreaker
from peerbot.result import ErrorKind
from peerbot.session.format import TokenUsage
from peerbot.worker.errors import ClaudeFailure

if TYPE_CHECKING:
    import anthropic

#: Consecutive failed attempts after which the breaker opens.
BREAKER_THRESHOLD: Final = 5
#: How long an open breaker refuses calls before letting one through to test the water.
BREAKER_COOLDOWN_SECONDS: Final = 60.0
#: Attempts per model step (the first try and the retries).
MAX_ATTEMPTS: Final = 6
#: Exponential backoff: first wait, and the longest any one wait may be.
BACKOFF_FIRST_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 30.0
#: ``retry-after`` values above this are not honoured (the turn would be better off pausing).
RETRY_AFTER_MAX_SECONDS: Final = 120.0
#: Statuses the API documents as worth retrying (408 and 409 as the SDK's own policy does).
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
#: Error types that mean "try again" even when they arrive inside a 200 stream.
RETRYABLE_TYPES: Final = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
#: Output tokens for a compaction summary (about 800 words asked for).
SUMMARY_MAX_TOKENS: Final = 2048


@dataclass(frozen=True)
class ModelStep:
    """One model response: the assistant message (as stored and sent back), its usage and why it stopped."""

    message: dict[str, Any]
    usage: TokenUsage
    stop_reason: str | None
    model: str

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [block for block in self.message["content"] if block.get("type") == "tool_use"]

    @property
    def text(self) -> str:
        return "".join(
            block.get("text", "") for block in self.message["content"] if block.get("type") == "text"
        )


class CircuitBreaker(SharedCircuitBreaker):
    """The shared breaker (:class:`peerbot.resilience.CircuitBreaker`) for Anthropic, whose open state is
    told to the person as a :class:`ClaudeFailure`."""

    def __init__(
        self,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("anthropic", threshold, cooldown, clock)

    def check(self) -> None:
        """Raise :class:`ClaudeFailure` without calling when the breaker is open."""
        if self.is_open:
            raise _outage(self.last_error)


def _outage(detail: str | None) -> ClaudeFailure:
    return ClaudeFailure(
        ErrorKind.CLAUDE,
        "Claude (Anthropic's API) is overloaded or unreachable right now, so I stopped.",
        "Your work so far is saved. Reply in this thread (or press Continue) in a few minutes to pick up "
        "where I stopped; https://status.anthropic.com says whether there is an incident.",
        detail=detail,
    )


def _describe(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    kind = getattr(error, "type", None)
    message = getattr(error, "api_message", None) or str(error)
    parts = [str(part) for part in (status, kind) if part]
    return f"{' '.join(parts)}: {message}" if parts else message


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt may succeed: rate limits, overload, server errors, dropped connections."""
    import anthropic
    import httpx2

    if isinstance(error, anthropic.APIStatusError):
        if error.response.headers.get("x-should-retry") == "false":
            return False
        return (
            error.status_code in RETRYABLE_STATUSES
            or error.type in RETRYABLE_TYPES
            or error.status_code >= 500
        )
    return isinstance(error, anthropic.APIConnectionError | httpx2.TransportError)


def retry_after(error: BaseException) -> float | None:
    """Seconds the API asked to wait (``retry-after-ms`` or ``retry-after``), when it said."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 <= seconds <= RETRY_AFTER_MAX_SECONDS:
            return seconds
    return None


def failure_for(error: BaseException, model: str) -> ClaudeFailure:
    """What to tell the person about an error retries did not (or cannot) fix."""
    import anthropic

    detail = _describe(error)
    message = (getattr(error, "api_message", None) or str(error)).lower()
    if isinstance(error, anthropic.AuthenticationError):
        return ClaudeFailure(
            ErrorKind.CLAUDE,
            "Anthropic refused Peerbot's API key.",
            "A Peerbot administrator must renew ANTHROPIC_API_KEY (the worker Secret).",
            detail=detail,
        )
    if isinstance(error, anthropic.PaymentRequiredError) or "credit balance" in message:
        return ClaudeFailure(
            ErrorKind.CLAUDE,
            "Peerbot's Anthropic account has run out of credit.",
            "A Peerbot administrator must add credit at console.anthropic.com; then reply here to continue.",
            detail=detail,
        )
    if isinstance(error, anthropic.NotFoundError | anthropic.PermissionDeniedError):
        return ClaudeFailure(
            ErrorKind.CLAUDE,
            f"The model `{model}` does not exist or Peerbot's API key may not use it.",
            "A Peerbot administrator must set ANTHROPIC_MODEL to a model the key can use.",
            detail=detail,
        )
    if isinstance(error, anthropic.ContentTooLargeError) or "prompt is too long" in message:
        return ClaudeFailure(
            ErrorKind.BUDGET,
            "This conversation has grown too long for the model.",
            "Start a new thread for the next task (the branch and pull request stay as they are).",
            detail=detail,
        )
    if isinstance(error, anthropic.RateLimitError):
        return ClaudeFailure(
            ErrorKind.CLAUDE,
            "Anthropic is rate-limiting Peerbot right now.",
            "Your work so far is saved: reply in this thread (or press Continue) in a minute or two.",
            detail=detail,
        )
    if is_retryable(error):
        return _outage(detail)
    return ClaudeFailure(
        ErrorKind.CLAUDE,
        "Claude's API rejected my request.",
        "This is likely a Peerbot bug: report it to a Peerbot administrator with a link to this thread. "
        "Replying here tries again.",
        detail=detail,
    )


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item, redact) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, redact) for item in value]
    return value


def _content(message: Any, redact: Callable[[str], str]) -> list[dict[str, Any]]:
    """The response's content blocks as plain dicts, with exactly the keys the API takes back.

    Text and tool inputs are redacted (a secret Claude repeats is neither run, stored nor shown);
    thinking blocks are kept as they came, since the API checks their signatures.
    """
    blocks: list[dict[str, Any]] = []
    for block in message.content:
        kind = block.type
        if kind == "text":
            if block.text:
                blocks.append({"type": "text", "text": redact(block.text)})
        elif kind == "tool_use":
            tool_input = _redacted(dict(block.input), redact)
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": tool_input})
        elif kind == "thinking":
            blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif kind == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.data})
        else:
            blocks.append(block.model_dump(mode="json", exclude_none=True))
    if not blocks:
        blocks.append({"type": "text", "text": "(no answer)"})
    return blocks


EventCallback = Callable[[str, str], None]
"""``(kind, detail)``: ``("text", delta)`` while text streams, ``("tool", name)`` when a tool call starts."""


class Claude:
    """The Messages API for one turn (see the module docstring)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        summary_model: str,
        max_tokens: int,
        breaker: CircuitBreaker | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seconds_left: Callable[[], float] = lambda: float("inf"),
        on_retry: Callable[[str, float], None] = lambda description, wait: None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.client = client
        self.model = model
        self.summary_model = summary_model
        self.max_tokens = max_tokens
        self.breaker = breaker or CircuitBreaker()
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.seconds_left = seconds_left
        self.on_retry = on_retry
        self.redact = redact
        self.requests = 0

    async def step(
        self,
        *,
        system: str,
        tools: Sequence[dict[str, Any]],
        messages: list[dict[str, Any]],
        tool_choice: dict[str, Any] | None = None,
        on_event: EventCallback = lambda kind, detail: None,
    ) -> ModelStep:
        """One model step over ``messages`` (breakpoints already placed), streamed, with retries."""
        cached_tools = [dict(tool) for tool in tools]
        if cached_tools:
            cached_tools[-1]["cache_control"] = {"type": "ephemeral"}
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "tools": cached_tools,
            "messages": messages,
        }
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
        return await self._with_retries(lambda: self._stream(params, on_event), self.model)

    async def summarise(self, transcript: str, system: str) -> tuple[str, TokenUsage]:
        """A compaction summary of ``transcript`` written by the (cheaper) summary model."""

        async def call() -> ModelStep:
            params = {
                "model": self.summary_model,
                "max_tokens": SUMMARY_MAX_TOKENS,
                "system": system,
                "messages": [{"role": "user", "content": transcript}],
            }
            return await self._stream(params, lambda kind, detail: None)

        result = await self._with_retries(call, self.summary_model)
        return result.text, result.usage

    async def _stream(self, params: dict[str, Any], on_event: EventCallback) -> ModelStep:
        self.requests += 1
        async with self.client.messages.stream(**params) as stream:
            async for event in stream:
                if event.type == "text":
                    on_event("text", event.text)
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    on_event("tool", event.content_block.name)
            final = await stream.get_final_message()
        return ModelStep(
            message={"role": "assistant", "content": _content(final, self.redact)},
            usage=TokenUsage.from_api(final.usage),
            stop_reason=final.stop_reason,
            model=str(params["model"]),
        )

    async def _with_retries(self, call: Callable[[], Awaitable[ModelStep]], model: str) -> ModelStep:
        from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_any
        from tenacity.stop import stop_base

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = retry_after(error) if error is not None else None
            if asked is not None:
                return asked
            backoff: float = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (state.attempt_number - 1))
            return backoff * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)

        seconds_left = self.seconds_left

        class OutOfTime(stop_base):
            """Stop when the next wait would run past the turn's deadline."""

            def __call__(self, state: RetryCallState) -> bool:
                return state.upcoming_sleep >= seconds_left()

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.on_retry(_describe(error) if error else "error", state.upcoming_sleep)

        def failed(error: BaseException) -> bool:
            if is_retryable(error):
                self.breaker.failure(_describe(error))
                return not self.breaker.is_open
            return False

        retrying = AsyncRetrying(
            retry=retry_if_exception(failed),
            stop=stop_any(stop_after_attempt(self.max_attempts), OutOfTime()),
            wait=wait,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self.breaker.check()
                    result = await call()
                    self.breaker.success()
                    return result
        except ClaudeFailure:
            raise
        except Exception as error:
            import anthropic
            import httpx2

            if isinstance(error, anthropic.AnthropicError | httpx2.HTTPError):
                if self.breaker.is_open:
                    raise _outage(self.breaker.last_error) from error
                raise failure_for(error, model) from error
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
