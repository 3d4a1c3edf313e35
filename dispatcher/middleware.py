"""Global Bolt middleware and the error handler: replayed requests, duplicate events, unhandled payloads.

Bolt's own middleware runs first (signature and timestamp check in HTTP mode: a bad or missing signature
or a request older than five minutes gets 401; then authorization, ignoring our own events, and the
``url_verification`` challenge). Ours runs after it, so nothing here ever sees a forged request:

1. **Replays** (HTTP mode): a request whose timestamp, signature and retry number were already seen is
   a byte-for-byte replay. Slack never sends one (each retry is signed anew and numbered), so it is
   acknowledged with an empty 200, does nothing, and is counted (``outcome="replayed"``).
2. **Duplicate events**: an ``event_id`` already handled on this replica (Slack's retries carry
   ``X-Slack-Retry-Num``, mirrored from Socket Mode's ``retry_attempt`` by Bolt) is acknowledged at once
   and counted (``outcome="duplicate"``). Across replicas the idempotent writes catch what this misses.

The error handler turns payloads no listener wants (unknown event types, malformed bodies) into an
empty 200, logged and counted, because a 404 would only make Slack send them again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from peerbot.dispatcher.cache import DEDUP_MAX_ENTRIES, TTLCache
from peerbot.dispatcher.service import Dispatcher

#: Lazy: bound at the first log call, so it follows configure_logging() whenever that runs.
log = structlog.get_logger(__name__)

#: Slack refuses to sign anything older than five minutes, and Bolt refuses such requests; a signature
#: remembered for ten covers that window plus clock skew between Slack and us.
REPLAY_TTL_SECONDS: Final = 10 * 60

Next = Callable[[], Awaitable[BoltResponse | None]]


def _header(request: AsyncBoltRequest, name: str) -> str:
    values = request.headers.get(name) or [""]
    return str(values[0])


def payload_type(body: Mapping[str, Any]) -> str:
    """A short label for what a payload is: the event type, ``block_actions``, ``slash_command``..."""
    if body.get("type") == "event_callback":
        event = body.get("event") or {}
        return str(event.get("type") or "unknown") if isinstance(event, Mapping) else "unknown"
    if body.get("command"):
        return "slash_command"
    return str(body.get("type") or "unknown")


def register(app: AsyncApp, dispatcher: Dispatcher, *, http: bool) -> None:
    """Add the replay and duplicate checks and the error handler to ``app``."""
    seen_signatures: TTLCache[tuple[str, str, str], bool] = TTLCache(
        ttl=REPLAY_TTL_SECONDS, max_entries=DEDUP_MAX_ENTRIES
    )
    metrics = dispatcher.metrics

    async def drop_replays(
        request: AsyncBoltRequest, body: dict[str, Any], next: Next
    ) -> BoltResponse | None:
        if http and request.mode == "http":
            key = (
                _header(request, "x-slack-request-timestamp"),
                _header(request, "x-slack-signature"),
                _header(request, "x-slack-retry-num"),
            )
            if not seen_signatures.add(key, True):
                metrics.event(payload_type(body), "replayed")
                log.warning("replayed request ignored", type=payload_type(body))
                return BoltResponse(status=200, body="")
        return await next()

    async def drop_duplicate_events(
        request: AsyncBoltRequest, body: dict[str, Any], next: Next
    ) -> BoltResponse | None:
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if isinstance(event_id, str) and not dispatcher.seen_events.add(event_id, True):
            retry = _header(request, "x-slack-retry-num")
            metrics.event(payload_type(body), "duplicate")
            log.info("duplicate event acknowledged", event_id=event_id, retry=retry or None)
            return BoltResponse(status=200, body="")
        return await next()

    async def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse | None:
        if isinstance(error, BoltUnhandledRequestError):
            kind = payload_type(body) if isinstance(body, Mapping) else "unknown"
            metrics.event(kind, "ignored_unhandled")
            log.info("payload not handled by any listener", type=kind)
            return BoltResponse(status=200, body="")
        metrics.error("listener")
        log.error("listener raised", error=error)
        return None

    app.middleware(drop_replays)
    app.middleware(drop_duplicate_events)
    app.error(on_error)
