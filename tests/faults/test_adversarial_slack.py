"""Bad and hostile input at the dispatcher's door, while another person keeps using Peerbot.

Each kind of input is sent a few times through the real dispatcher (HTTP mode, where anyone on the internet
can reach it), and after each kind a bystander (bob) mentions Peerbot: his request must be recorded and
answered with its status message, within Slack's three seconds, every time. What each input must get:

| input | outcome |
|---|---|
| forged signature, stale timestamp, no signature | 401, nothing recorded |
| a replay of a request already handled, byte for byte | 200, ignored (``replayed``) |
| a 2 MiB body | 413, nothing recorded |
| signed but not JSON | 200, dropped and counted (``rejected_malformed``) |
| an event type Peerbot does not handle | 200, ignored (``ignored_unhandled``) |
| invalid UTF-8 (correctly signed) | 401: Slack only sends UTF-8 |
| control characters and bidirectional overrides in the text | recorded like any request (text never stored) |
| a 100,000-character message | recorded by reference; the person is told Slack keeps 40,000 |
| a mention storm from one person | the rate limit's number recorded, the rest refused kindly |

``tests/integration/test_dispatcher_edges.py`` checks most of these one by one in more detail; this test
checks them together, repeatedly, with someone else being served throughout.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import aiohttp
import pytest

from peerbot import constants
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from peerbot.testing.slack.events import signed_headers
from tests.faults.conftest import Recorder

#: How many of each bad input.
REPEATS: Final = 3
#: Mentions in the storm (from one person, in new threads, all at once).
STORM: Final = 40
#: The dispatcher's per-user limit (its default, RATE_LIMIT_PER_MINUTE).
RATE_LIMIT: Final = 10
#: Bigger than aiohttp's (and so the dispatcher's) 1 MiB request limit; Slack's payloads are far smaller.
OVERSIZED_BYTES: Final = 2 * 1024 * 1024
LONG_MESSAGE_CHARACTERS: Final = 100_000
CONTROL_TEXT: Final = "fix \x00 the \x1b[31mbuild\x1b[0m \u202egnp.exe\u202c \x07\x08 now\r\n\t"


@pytest.fixture
async def door(slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn) -> AsyncIterator[Door]:
    slack = slack_standin
    bob = slack.add_user("bob")
    slack.set_members(slack.public_channel, [slack.bot_user_id, slack.human, bob])
    # alice and bob send many requests in this test; only the storm's sender has the ordinary limit.
    async with DispatcherHarness(
        slack,
        kubernetes_standin,
        trusted_users=f"{slack.human},{bob}",
        trusted_rate_limit_per_minute=10_000,
    ) as harness:
        yield Door(harness, bob)


class Door:
    """Sends raw requests to the dispatcher's events endpoint and serves a bystander in between."""

    def __init__(self, harness: DispatcherHarness, bob: str) -> None:
        self.harness = harness
        self.slack = harness.slack
        self.bob = bob
        self.bystander_served = 0
        self.bystander_tried = 0

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.harness.app.events_url, data=body, headers=headers) as response,
        ):
            await response.read()
            return response.status

    async def signed(self, body: bytes, content_type: str = "application/json") -> int:
        return await self.post(
            body, signed_headers(self.slack.signing_secret, body, content_type=content_type)
        )

    def mention(self, text: str = "please look", user: str | None = None) -> dict[str, Any]:
        slack = self.slack
        return slack.app_mention(user or slack.human, slack.public_channel, f"{slack.mention} {text}")

    def recorded(self, event: dict[str, Any]) -> bool:
        return any(c["spec"].get("threadTs") == event["event"]["ts"] for c in self.harness.conversations())

    def bot_replies(self, event: dict[str, Any]) -> list[str]:
        thread = self.slack.thread(self.slack.public_channel, event["event"]["ts"])
        return [m.text for m in thread if m.user == self.slack.bot_user_id]

    async def bystander(self) -> bool:
        """Bob asks for something: recorded, acknowledged in time, and shown its status message."""
        self.bystander_tried += 1
        event = self.mention(f"bob's request {self.bystander_tried}", user=self.bob)
        delivery = await self.harness.deliver(event)
        first = delivery.attempts[0]
        in_time = (
            first.acked_at is not None
            and first.acked_at - first.sent_at < constants.SLACK_ACK_DEADLINE_SECONDS
        )
        served = (
            in_time and self.recorded(event) and any("Queued" in text for text in self.bot_replies(event))
        )
        self.bystander_served += served
        return served


async def test_bad_and_hostile_slack_input_is_refused_or_handled_and_others_are_served(
    door: Door, ledger: Recorder
) -> None:
    dispatcher = door.harness
    slack = door.slack
    metric = "peerbot_dispatcher_events_total"
    results: dict[str, tuple[int, int]] = {}  # kind: (tried, handled as it must be)

    async def attempt(kind: str, check: Callable[[], Awaitable[bool]], times: int = REPEATS) -> None:
        handled = 0
        for _ in range(times):
            handled += await check()
            await dispatcher.settle()
            await door.bystander()
        results[kind] = (times, handled)

    async def forged() -> bool:
        event = door.mention("rm -rf")
        delivery = await slack.send_forged_event(dispatcher.app.events_url, event).wait_async()
        return delivery.last.status == 401 and not door.recorded(event)

    async def stale() -> bool:
        event = door.mention("an old one")
        delivery = await slack.send_stale_event(dispatcher.app.events_url, event).wait_async()
        return delivery.last.status == 401 and not door.recorded(event)

    async def unsigned() -> bool:
        event = door.mention("no signature")
        delivery = await slack.send_unsigned_event(dispatcher.app.events_url, event).wait_async()
        return delivery.last.status == 401 and not door.recorded(event)

    async def replayed() -> bool:
        event = door.mention("once")
        original = await dispatcher.deliver(event)
        before = dispatcher.metric(metric, type="app_mention", outcome="replayed")
        again = await slack.replay(original).wait_async()
        await dispatcher.settle()
        statuses = [text for text in door.bot_replies(event) if "Queued" in text]
        after = dispatcher.metric(metric, type="app_mention", outcome="replayed")
        return again.last.status == 200 and after == before + 1 and len(statuses) == 1

    async def oversized() -> bool:
        event = door.mention("x")
        event["event"]["text"] += "y" * OVERSIZED_BYTES
        return await door.signed(json.dumps(event).encode()) == 413 and not door.recorded(event)

    async def malformed() -> bool:
        before = dispatcher.metric(metric, type="unknown", outcome="rejected_malformed")
        status = await door.signed(b'{"type": "event_callback", "event": {"type": "app_mention",')
        return (
            status == 200
            and dispatcher.metric(metric, type="unknown", outcome="rejected_malformed") == before + 1
        )

    async def unknown_type() -> bool:
        event = door.mention("x")
        event["event"] = {"type": "emoji_changed", "subtype": "add", "name": "party"}
        event["event_id"] = f"Ev{time.monotonic_ns()}"
        before = dispatcher.metric(metric, type="emoji_changed", outcome="ignored_unhandled")
        status = await door.signed(json.dumps(event).encode())
        return (
            status == 200
            and dispatcher.metric(metric, type="emoji_changed", outcome="ignored_unhandled") == before + 1
        )

    async def invalid_utf8() -> bool:
        event = door.mention("look at this")
        body = json.dumps(event).encode().replace(b"look", b"l\xff\xfek")
        return await door.signed(body) == 401 and not door.recorded(event)

    async def control_characters() -> bool:
        event = door.mention(CONTROL_TEXT)
        delivery = await dispatcher.deliver(event)
        stored = json.dumps(dispatcher.conversations())
        return delivery.acked and door.recorded(event) and "gnp.exe" not in stored

    async def long_message() -> bool:
        event = door.mention("z" * LONG_MESSAGE_CHARACTERS)
        delivery = await dispatcher.deliver(event)
        told = any("first 40,000" in text for text in door.bot_replies(event))
        return (
            delivery.acked
            and door.recorded(event)
            and told
            and "z" * 100 not in json.dumps(dispatcher.conversations())
        )

    async def storm() -> bool:
        storm_user = slack.add_user("stormy")
        slack.set_members(slack.public_channel, [slack.bot_user_id, slack.human, door.bob, storm_user])
        events = [door.mention(f"again {n}", user=storm_user) for n in range(STORM)]
        deliveries = [dispatcher.send(event) for event in events]
        served_meanwhile = await door.bystander()
        for delivery in deliveries:
            await delivery.wait_async()
        await dispatcher.settle()
        acked = all(d.attempts[0].outcome == "acked" for d in deliveries)
        recorded = sum(door.recorded(event) for event in events)
        told = sum(any("try again" in text for text in door.bot_replies(event)) for event in events)
        return acked and recorded == RATE_LIMIT and told == 1 and served_meanwhile

    await attempt("forged signature", forged)
    await attempt("stale timestamp (over five minutes old)", stale)
    await attempt("no signature", unsigned)
    await attempt("replayed request (byte for byte)", replayed)
    await attempt("oversized body (2 MiB)", oversized)
    await attempt("malformed JSON, correctly signed", malformed)
    await attempt("unknown event type", unknown_type)
    await attempt("invalid UTF-8, correctly signed", invalid_utf8)
    await attempt("control characters and bidi overrides in the text", control_characters)
    await attempt(f"a {LONG_MESSAGE_CHARACTERS:,}-character message", long_message)
    await attempt(f"mention storm: {STORM} mentions from one person at once", storm, times=1)

    for kind, (tried, handled) in results.items():
        ledger.record(f"Slack input: {kind}", tried=tried, survived=handled, lost=0)
    lost = door.bystander_tried - door.bystander_served
    ledger.record(
        "another person's requests while all of the above arrive",
        tried=door.bystander_tried,
        survived=door.bystander_served,
        lost=lost,
    )
    failures = {kind: f"{handled}/{tried}" for kind, (tried, handled) in results.items() if handled != tried}
    assert not failures, failures
    assert lost == 0, f"{lost} of bob's {door.bystander_tried} requests were not served"
