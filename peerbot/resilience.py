"""Retries and circuit breakers around the services Peerbot depends on, the same way in every part.

- **Retries** use tenacity (:func:`retrying`): exponential backoff from ``first`` seconds, doubling up to
  ``maximum``, with jitter (each wait is drawn between half and all of the backoff, so replicas that failed
  together do not retry together), a bounded number of attempts, and a hook that counts every retry.
  Slack's own client retries through ``slack_sdk`` retry handlers instead; :func:`slack_retry_handlers`
  makes those count their retries the same way.
- **Circuit breakers** (:class:`CircuitBreaker`, one per dependency in :class:`Breakers`): after
  ``threshold`` failures in a row the breaker *opens* and calls fail at once (:class:`CircuitOpen`) for
  ``cooldown`` seconds, so an outage is reported once instead of being hammered; then it is *half-open*:
  the next call is let through, and its success closes the breaker (its failure opens it again).

Why our own breaker and not a library: the candidates on PyPI are either synchronous (pybreaker, whose
async support needs Tornado), unmaintained (aiobreaker, last release 2021), or bring a storage layer and
their own state machine (purgatory) that would have to be mirrored into our metrics and ``/ready``. The
whole pattern is the forty lines below, with a listener that feeds the metrics and the health endpoints.

:func:`post_with_fallback` is the Slack safety net every part uses: a message Slack rejects because of its
blocks or size (``invalid_blocks``, ``msg_too_long``...) is sent again as plain text within Slack's limits,
counted and logged with the reason.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeVar

from peerbot.logs import get_logger

if TYPE_CHECKING:
    from slack_sdk.http_retry.async_handler import AsyncRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient
    from tenacity import AsyncRetrying

log = get_logger(__name__)

#: Failures in a row after which a breaker opens (the worker's Claude breaker has used five since the start).
BREAKER_THRESHOLD: Final = 5
#: How long an open breaker refuses calls before letting one through to test the water.
BREAKER_COOLDOWN_SECONDS: Final = 60.0
#: Backoff of :func:`retrying`: the first wait, and the longest one wait may be.
BACKOFF_FIRST_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 30.0
#: Jitter: each wait is drawn between this share of the backoff and all of it.
JITTER_LOW: Final = 0.5
#: Slack answers these when a message's blocks or size break a rule; the message is re-sent as plain text.
SLACK_FALLBACK_ERRORS: Final = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long", "invalid_attachments"}
)


class Dependency(StrEnum):
    """The outside services Peerbot depends on (the ``dependency`` label of the metrics)."""

    SLACK = "slack"
    GITHUB = "github"
    GCS = "gcs"
    ANTHROPIC = "anthropic"
    KUBERNETES = "kubernetes"


class BreakerState(IntEnum):
    """A breaker's state; the value is what the ``circuit_breaker_state`` gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(Exception):
    """A call was refused without trying because the dependency's breaker is open."""

    def __init__(self, dependency: str, detail: str | None, retry_in: float) -> None:
        self.dependency = dependency
        self.detail = detail
        self.retry_in = retry_in
        super().__init__(
            f"{dependency} failed repeatedly (last: {detail or 'unknown error'}); "
            f"not calling it again for {retry_in:.0f} s"
        )


B = TypeVar("B", bound="CircuitBreaker")

#: ``(dependency, old state, new state)``: told whenever a breaker changes state.
StateListener = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Counts consecutive failures of one dependency; open after ``threshold`` of them, for ``cooldown``."""

    def __init__(
        self,
        name: str = "dependency",
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        listeners: Iterable[StateListener] = (),
    ) -> None:
        if threshold < 1:
            raise ValueError(f"a breaker's threshold must be at least 1, not {threshold}")
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error: str | None = None
        self.times_opened = 0
        self.listeners: list[StateListener] = list(listeners)
        self._reported = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def is_open(self) -> bool:
        """Open (refusing calls); a breaker past its cooldown is half-open and lets the next call through."""
        return self.state is BreakerState.OPEN

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a call through (0 when it is not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def check(self) -> None:
        """Raise :class:`CircuitOpen` without calling when the breaker is open."""
        self._notify()
        if self.is_open:
            raise CircuitOpen(self.name, self.last_error, self.retry_in())

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._notify()

    def failure(self, description: str) -> None:
        self.failures += 1
        self.last_error = description
        half_open = self.state is BreakerState.HALF_OPEN
        if self.failures >= self.threshold or half_open:
            if self.state is not BreakerState.OPEN:
                self.times_opened += 1
                log.warning("circuit opened", dependency=self.name, failures=self.failures, error=description)
            self.opened_at = self.clock()
        self._notify()

    def describe(self) -> str:
        """``ok``, or what is wrong, for ``/ready`` and ``peerbot doctor``."""
        state = self.state
        if state is BreakerState.CLOSED:
            return "ok"
        if state is BreakerState.OPEN:
            return (
                f"circuit open after {self.failures} failures in a row (last: {self.last_error}); "
                f"next try in {self.retry_in():.0f} s"
            )
        return f"recovering: the next call tests it (last error: {self.last_error})"

    def _notify(self) -> None:
        state = self.state
        if state is self._reported:
            return
        old, self._reported = self._reported, state
        if state is BreakerState.CLOSED:
            log.info("circuit closed", dependency=self.name)
        for listener in self.listeners:
            listener(self.name, old, state)


class Breakers:
    """One :class:`CircuitBreaker` per dependency, made on first use, all reporting to ``listeners``."""

    def __init__(
        self,
        *,
        threshold: int = BREAKER_THRESHOLD,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        listeners: Iterable[StateListener] = (),
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.listeners = list(listeners)
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, dependency: str) -> CircuitBreaker:
        breaker = self._breakers.get(dependency)
        if breaker is None:
            breaker = CircuitBreaker(
                str(dependency), self.threshold, self.cooldown, self.clock, listeners=self.listeners
            )
            self._breakers[str(dependency)] = breaker
        return breaker

    def add(self, breaker: B) -> B:
        """Adopt a breaker made elsewhere (the worker's Claude breaker), so it reports like the others."""
        for listener in self.listeners:
            if listener not in breaker.listeners:
                breaker.listeners.append(listener)
        self._breakers[breaker.name] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        """Each known dependency's breaker, described (``ok`` when closed)."""
        return {name: breaker.describe() for name, breaker in sorted(self._breakers.items())}

    def opened(self) -> list[str]:
        """The dependencies whose breaker opened at least once."""
        return sorted(name for name, breaker in self._breakers.items() if breaker.times_opened)


# --- retries ----------------------------------------------------------------------------------------------


def backoff(
    attempt: int, *, first: float = BACKOFF_FIRST_SECONDS, maximum: float = BACKOFF_MAX_SECONDS
) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): exponential, capped, with jitter."""
    base: float = min(maximum, first * 2 ** (attempt - 1))
    return base * random.uniform(JITTER_LOW, 1.0)  # noqa: S311 (jitter, not security)


def retrying(
    dependency: str,
    *,
    retry_on: Callable[[BaseException], bool],
    attempts: int,
    first: float = BACKOFF_FIRST_SECONDS,
    maximum: float = BACKOFF_MAX_SECONDS,
    breaker: CircuitBreaker | None = None,
    on_retry: Callable[[str, BaseException, float], None] = lambda dependency, error, wait: None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    seconds_left: Callable[[], float] = lambda: float("inf"),
) -> AsyncRetrying:
    """A tenacity ``AsyncRetrying`` for one dependency (see the module docstring).

    ``retry_on`` says which errors are worth another attempt; each of those is a failure for ``breaker``,
    and once the breaker is open no further attempt is made. ``on_retry`` is told before each wait (count
    it, tell the person); no wait runs past ``seconds_left()``. Use it as::

        async for attempt in retrying("github", retry_on=is_outage, attempts=3):
            with attempt:
                await call()
    """
    from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_any
    from tenacity.stop import stop_base

    class OutOfTime(stop_base):
        """Stop when the next wait would run past the deadline."""

        def __call__(self, state: RetryCallState) -> bool:
            return state.upcoming_sleep >= seconds_left()

    def should_retry(error: BaseException) -> bool:
        if isinstance(error, CircuitOpen) or not retry_on(error):
            return False
        if breaker is not None:
            breaker.failure(f"{type(error).__name__}: {error}"[:300])
            return not breaker.is_open
        return True

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            on_retry(dependency, error, state.upcoming_sleep)

    options: dict[str, Any] = {}
    if sleep is not None:
        options["sleep"] = sleep
    return AsyncRetrying(
        retry=retry_if_exception(should_retry),
        stop=stop_any(stop_after_attempt(attempts), OutOfTime()),
        wait=lambda state: backoff(state.attempt_number, first=first, maximum=maximum),
        before_sleep=before_sleep,
        reraise=True,
        **options,
    )


async def call_with_retries(
    dependency: str,
    call: Callable[[], Awaitable[Any]],
    *,
    retry_on: Callable[[BaseException], bool],
    attempts: int,
    breaker: CircuitBreaker | None = None,
    **options: Any,
) -> Any:
    """``await call()`` under :func:`retrying`; a success closes ``breaker``."""
    async for attempt in retrying(
        dependency, retry_on=retry_on, attempts=attempts, breaker=breaker, **options
    ):
        with attempt:
            if breaker is not None:
                breaker.check()
            result = await call()
            if breaker is not None:
                breaker.success()
            return result
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


# --- Slack ------------------------------------------------------------------------------------------------


def slack_retry_handlers(
    on_retry: Callable[[str], None] = lambda reason: None,
    *,
    rate_limit_retries: int = 2,
    connection_retries: int = 1,
    server_error_retries: int = 1,
) -> list[AsyncRetryHandler]:
    """``slack_sdk``'s own retry handlers (429 honours ``Retry-After``; dropped connections; 500/503), each
    telling ``on_retry`` (``rate_limited``, ``connection``, ``server_error``) before it retries."""
    from slack_sdk.http_retry.builtin_async_handlers import (
        AsyncConnectionErrorRetryHandler,
        AsyncRateLimitErrorRetryHandler,
        AsyncServerErrorRetryHandler,
    )

    def counting(base: type[Any], reason: str, count: int) -> AsyncRetryHandler:
        class Counting(base):  # type: ignore[misc]
            async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
                on_retry(reason)
                await super().prepare_for_next_attempt_async(**kwargs)

        handler: AsyncRetryHandler = Counting(max_retry_count=count)
        return handler

    return [
        counting(AsyncConnectionErrorRetryHandler, "connection", connection_retries),
        counting(AsyncRateLimitErrorRetryHandler, "rate_limited", rate_limit_retries),
        counting(AsyncServerErrorRetryHandler, "server_error", server_error_retries),
    ]


def slack_error_code(error: BaseException) -> str | None:
    """The ``error`` string of a Slack API error (``invalid_blocks``...), if it is one."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    try:
        value = response.get("error")
    except (AttributeError, TypeError):
        return None
    return value if isinstance(value, str) else None


def is_slack_outage(error: BaseException) -> bool:
    """Slack itself failing (unreachable, 5xx, still rate limited after retries), not refusing a message."""
    from slack_sdk.errors import SlackApiError

    if isinstance(error, SlackApiError):
        status = getattr(error.response, "status_code", 200)
        return bool(status == 429 or status >= 500)
    return isinstance(error, OSError | TimeoutError) or type(error).__module__.startswith("aiohttp")


#: ``(reason)``: told whenever a message was re-sent as plain text.
FallbackListener = Callable[[str], None]


async def post_with_fallback(
    slack: AsyncWebClient,
    method: str,
    payload: Mapping[str, Any],
    *,
    on_fallback: FallbackListener = lambda reason: None,
    breaker: CircuitBreaker | None = None,
    **context: Any,
) -> Any:
    """Call ``chat.postMessage``, ``chat.update`` or ``chat.postEphemeral`` with ``payload``; if Slack
    rejects the message's blocks or size, send it again as plain text within limits (counted through
    ``on_fallback`` and logged with the reason and ``context``). Returns Slack's response.

    With a ``breaker``, an open breaker refuses at once (:class:`CircuitOpen`), Slack outages count as its
    failures, and a success closes it. Other Slack errors are raised as they are.
    """
    from slack_sdk.errors import SlackApiError

    from peerbot.slack_messages import plain_text_fallback

    methods: dict[str, Callable[..., Awaitable[Any]]] = {
        "chat.postMessage": slack.chat_postMessage,
        "chat.update": slack.chat_update,
        "chat.postEphemeral": slack.chat_postEphemeral,
    }
    call = methods[method]
    if breaker is not None:
        breaker.check()
    try:
        try:
            response = await call(**payload)
        except SlackApiError as error:
            reason = slack_error_code(error)
            if reason not in SLACK_FALLBACK_ERRORS:
                raise
            on_fallback(reason or "unknown")
            log.warning("slack rejected a message; sent it again as plain text", reason=reason, **context)
            response = await call(**plain_text_fallback(dict(payload)))
    except Exception as error:
        if breaker is not None and is_slack_outage(error):
            breaker.failure(f"{method}: {slack_error_code(error) or type(error).__name__}")
        raise
    if breaker is not None:
        breaker.success()
    return response


__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "BREAKER_COOLDOWN_SECONDS",
    "BREAKER_THRESHOLD",
    "SLACK_FALLBACK_ERRORS",
    "BreakerState",
    "Breakers",
    "CircuitBreaker",
    "CircuitOpen",
    "Dependency",
    "backoff",
    "call_with_retries",
    "is_slack_outage",
    "post_with_fallback",
    "retrying",
    "slack_error_code",
    "slack_retry_handlers",
]
