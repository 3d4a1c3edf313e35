"""Slack events as Slack sends them: envelopes, request signatures, and records of each delivery.

- :func:`sign` computes ``X-Slack-Signature`` exactly as Slack does (``v0=`` + HMAC-SHA256 of
  ``v0:{timestamp}:{body}`` keyed with the signing secret).
- :func:`event_callback`, :func:`block_actions_payload` and :func:`slash_command_payload` build the bodies
  of the Events API, interactivity and slash commands; :func:`user_event` turns a stored message into the
  ``message``/``app_mention`` event a person's message produces.
- :class:`Delivery` records every attempt to hand one of them to the app (over HTTP or Socket Mode), with
  retries and acknowledgements, so tests can assert "delivered 2 times, acknowledged once".

Shapes follow docs.slack.dev (Events API, Socket Mode, interactivity payloads) and envelopes recorded
from the real service.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

#: Slack still sends the deprecated verification token in every payload; apps should ignore it.
VERIFICATION_TOKEN: Final = "standin-verification-token"  # noqa: S105 (a fixed public value, not a secret)
#: What Slack's HTTP requests say they are.
SLACK_USER_AGENT: Final = "Slackbot 1.0 (+https://api.slack.com/robots)"

Transport = Literal["http", "socket_mode"]
EnvelopeType = Literal["events_api", "interactive", "slash_commands"]
Outcome = Literal[
    "pending", "acked", "timeout", "http_error", "connection_failed", "not_connected", "cancelled"
]

_MENTION: Final = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_MARKUP: Final = re.compile(r"<([^<>]+)>")


def sign(signing_secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` Slack sends for ``body`` at ``timestamp`` (seconds, as a string)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(
    signing_secret: str, body: bytes, *, content_type: str, timestamp: int | None = None
) -> dict[str, str]:
    """The headers of a request Slack sends to an app: content type, timestamp and signature."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": content_type,
        "User-Agent": SLACK_USER_AGENT,
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign(signing_secret, stamp, body),
    }


def _rich_element(markup: str) -> dict[str, Any]:
    """The rich text element for one ``<…>`` of message markup (a mention, a channel, a link)."""
    target, _, label = markup.partition("|")
    if target.startswith("@"):
        return {"type": "user", "user_id": target[1:]}
    if target.startswith("#"):
        return {"type": "channel", "channel_id": target[1:]}
    if target.startswith("!"):
        return {"type": "broadcast", "range": target[1:]}
    link: dict[str, Any] = {"type": "link", "url": target}
    if label:
        link["text"] = label
    return link


def rich_text_blocks(text: str) -> list[dict[str, Any]]:
    """The ``rich_text`` block the Slack client adds to a person's message (mentions, links as elements)."""
    elements: list[dict[str, Any]] = []
    position = 0
    for match in _MARKUP.finditer(text):
        if match.start() > position:
            elements.append({"type": "text", "text": html.unescape(text[position : match.start()])})
        elements.append(_rich_element(match.group(1)))
        position = match.end()
    if position < len(text):
        elements.append({"type": "text", "text": html.unescape(text[position:])})
    block_id = base64.b32encode(hashlib.sha1(text.encode(), usedforsecurity=False).digest())[:5].decode()
    return [
        {
            "type": "rich_text",
            "block_id": block_id,
            "elements": [{"type": "rich_text_section", "elements": elements}],
        }
    ]


def mentions(text: str) -> list[str]:
    """The user ids ``<@U…>`` mentioned in a message text."""
    return _MENTION.findall(text)


def event_callback(
    event: Mapping[str, Any],
    *,
    team_id: str,
    api_app_id: str,
    bot_user_id: str,
    event_time: int | None = None,
) -> dict[str, Any]:
    """Wrap an event in the Events API's ``event_callback`` envelope, with a fresh ``event_id``."""
    event_id = "Ev" + uuid.uuid4().hex[:10].upper()
    channel = event.get("channel", "")
    context = base64.b64encode(json.dumps({"tid": team_id, "cid": channel}).encode()).decode()
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{context}",
    }


def user_event(
    message: Mapping[str, Any], *, channel: str, channel_type: str, event_type: str = "message"
) -> dict[str, Any]:
    """The ``message`` (or ``app_mention``) event for a message as ``conversations.replies`` shows it."""
    event = {
        key: value
        for key, value in message.items()
        if key
        not in {"reply_count", "reply_users_count", "latest_reply", "reply_users", "is_locked", "subscribed"}
    }
    event["type"] = event_type
    event["channel"] = channel
    event["event_ts"] = message["ts"]
    if event_type == "message":
        event["channel_type"] = channel_type
    else:
        event.pop("subtype", None)
    # A new message that starts a thread carries no thread_ts yet.
    if event.get("thread_ts") == event["ts"]:
        del event["thread_ts"]
    return event


def block_actions_payload(
    *,
    team_id: str,
    team_domain: str,
    api_app_id: str,
    user: Mapping[str, Any],
    channel: Mapping[str, Any],
    message: Mapping[str, Any],
    action: Mapping[str, Any],
    block_id: str,
    response_url: str,
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends when a person clicks a button in a message."""
    action_ts = f"{time.time():.6f}"
    clicked = {
        "action_id": action.get("action_id"),
        "block_id": block_id,
        "text": action.get("text"),
        "value": action.get("value"),
        "type": action.get("type", "button"),
        "action_ts": action_ts,
    }
    if "style" in action:
        clicked["style"] = action["style"]
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message["ts"],
        "channel_id": channel["id"],
        "is_ephemeral": False,
    }
    if message.get("thread_ts"):
        container["thread_ts"] = message["thread_ts"]
    return {
        "type": "block_actions",
        "user": {"id": user["id"], "username": user["name"], "name": user["name"], "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:32]}",
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel["id"], "name": channel.get("name", "")},
        "message": dict(message),
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [clicked],
    }


def slash_command_payload(
    *,
    team_id: str,
    team_domain: str,
    api_app_id: str,
    user: Mapping[str, Any],
    channel: Mapping[str, Any],
    command: str,
    text: str,
    response_url: str,
) -> dict[str, str]:
    """The fields of a slash command invocation (form-encoded over HTTP, an object in Socket Mode)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel["id"],
        "channel_name": channel.get("name", ""),
        "user_id": user["id"],
        "user_name": user["name"],
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:32]}",
    }


@dataclass(frozen=True)
class Attempt:
    """One try at handing a payload to the app."""

    #: 0 for the first delivery, then 1, 2, 3 for Slack's retries.
    number: int
    #: ``http_timeout``/``http_error`` (HTTP) or ``timeout`` (Socket Mode) on a retry; ``None`` at first.
    retry_reason: str | None
    sent_at: float
    envelope_id: str | None = None
    outcome: Outcome = "pending"
    #: The app's HTTP status (HTTP mode) when it answered in time.
    status: int | None = None
    #: The app's response body (HTTP) or the ack's ``payload`` (Socket Mode).
    body: Any = None
    acked_at: float | None = None
    #: Socket Mode acks that came after the deadline (Slack ignores them and has already retried).
    late_acks: int = 0
    #: What was sent over HTTP (headers and body), e.g. to check the retry headers or to replay it.
    request_headers: Mapping[str, str] = field(default_factory=dict)
    request_body: bytes | None = None


@dataclass(eq=False)
class Delivery:
    """Everything that happened to one payload: its attempts, retries and acknowledgements (thread-safe)."""

    transport: Transport
    envelope_type: EnvelopeType
    payload: dict[str, Any]
    url: str | None
    _condition: threading.Condition
    _attempts: list[Attempt] = field(default_factory=list)
    _finished: bool = False

    @property
    def event_id(self) -> str | None:
        event_id = self.payload.get("event_id")
        return event_id if isinstance(event_id, str) else None

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        with self._condition:
            return tuple(self._attempts)

    @property
    def delivered_count(self) -> int:
        """How many times the payload reached (or was sent towards) the app, retries included."""
        return len(self.attempts)

    @property
    def ack_count(self) -> int:
        """How many attempts the app acknowledged in time (HTTP 2xx, or a Socket Mode ack)."""
        return sum(1 for attempt in self.attempts if attempt.outcome == "acked")

    @property
    def acked(self) -> bool:
        return self.ack_count > 0

    @property
    def finished(self) -> bool:
        """Whether Slack is done with it: acknowledged, or out of retries."""
        with self._condition:
            return self._finished

    @property
    def last(self) -> Attempt:
        attempts = self.attempts
        if not attempts:
            raise LookupError("the payload was not sent yet")
        return attempts[-1]

    def _add(self, attempt: Attempt) -> int:
        with self._condition:
            self._attempts.append(attempt)
            self._condition.notify_all()
            return len(self._attempts) - 1

    def _update(self, index: int, **changes: Any) -> None:
        with self._condition:
            self._attempts[index] = replace(self._attempts[index], **changes)
            self._condition.notify_all()

    def _finish(self) -> None:
        with self._condition:
            self._finished = True
            self._condition.notify_all()

    def wait(self, timeout: float = 10.0) -> Delivery:
        """Block until Slack is done with this payload (acknowledged, or out of retries)."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._finished, timeout=timeout):
                raise TimeoutError(
                    f"the {self.envelope_type} delivery {self.event_id or ''} was still going after "
                    f"{timeout:g} s ({len(self._attempts)} attempts so far); is the app answering?"
                )
        return self

    # The timeout bounds a wait in a worker thread, which asyncio.timeout could not interrupt.
    async def wait_async(self, timeout: float = 10.0) -> Delivery:  # noqa: ASYNC109
        """:meth:`wait` for async tests (it waits in a worker thread, never blocking the event loop)."""
        return await asyncio.to_thread(self.wait, timeout)
