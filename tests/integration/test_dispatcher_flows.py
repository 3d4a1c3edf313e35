"""The dispatcher end to end, as a person sees it: Slack stand-in in, Kubernetes stand-in out.

Signed HTTP events and Socket Mode envelopes go through the real dispatcher (Bolt, the listeners, the
async Kubernetes client); the tests read the thread in the Slack stand-in and the Conversations in the
Kubernetes stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.conversation import ConversationSpec
from peerbot.dispatcher.store import FILES_ANNOTATION, RequestRecord, WriteOutcome
from peerbot.naming import conversation_name
from peerbot.slack_messages import ACTION_CONTINUE, ACTION_STOP, paused_message
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import Message, SlackStandIn

MakeHarness = Callable[..., Awaitable[DispatcherHarness]]


@pytest.fixture(params=["http", "socket_mode"])
def socket_mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "socket_mode")


@pytest.fixture
def slack(slack_standin_factory: Callable[..., SlackStandIn]) -> SlackStandIn:
    return slack_standin_factory()


@pytest.fixture
async def make_harness(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> AsyncIterator[MakeHarness]:
    """Start dispatchers against the stand-ins: ``await make_harness(socket_mode=True, **settings)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**options: Any) -> DispatcherHarness:
            harness = DispatcherHarness(slack, kubernetes_standin, **options)
            return await stack.enter_async_context(harness)

        yield make


@pytest.fixture
async def harness(make_harness: MakeHarness, socket_mode: bool) -> DispatcherHarness:
    return await make_harness(socket_mode=socket_mode)


@pytest.fixture
async def http(make_harness: MakeHarness) -> DispatcherHarness:
    return await make_harness(socket_mode=False)


# --- what a person sees ----------------------------------------------------------------------------------


def replies_from_bot(slack: SlackStandIn, channel: str, thread_ts: str) -> list[Message]:
    return [m for m in slack.thread(channel, thread_ts) if m.user == slack.bot_user_id and m.is_reply]


def status_messages(slack: SlackStandIn, channel: str, thread_ts: str) -> list[Message]:
    return [m for m in replies_from_bot(slack, channel, thread_ts) if "Queued" in m.text]


def reactions(slack: SlackStandIn, channel: str, ts: str) -> set[str]:
    return set(slack.message(channel, ts).reactions)


def ephemeral_texts(slack: SlackStandIn, channel: str, user: str) -> list[str]:
    return [m.text for m in slack.ephemeral(channel, user)]


def ts_of(event: dict[str, Any]) -> str:
    return str(event["event"]["ts"])


def name_for(slack: SlackStandIn, channel: str, thread_ts: str) -> str:
    return conversation_name(slack.team_id, channel, thread_ts)


def button_values(message: Message) -> dict[str, str]:
    return {
        element["action_id"]: element["value"]
        for block in message.blocks
        if block.get("type") == "actions"
        for element in block["elements"]
    }


# --- a request -------------------------------------------------------------------------------------------


async def test_mention_becomes_one_conversation_with_a_status_message(
    harness: DispatcherHarness, slack: SlackStandIn
) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} add a health check")
    delivery = await harness.deliver(event)

    assert delivery.acked
    assert delivery.delivered_count == 1
    ts = ts_of(event)
    [conversation] = harness.conversations()
    assert conversation["metadata"]["name"] == name_for(slack, slack.public_channel, ts)
    [status] = status_messages(slack, slack.public_channel, ts)
    assert "Queued: starting a worker…" in status.text
    assert button_values(status) == {ACTION_STOP: conversation["metadata"]["name"]}
    assert conversation["spec"] == {
        "team": slack.team_id,
        "channel": slack.public_channel,
        "threadTs": ts,
        "user": slack.human,
        "requestedTs": ts,
        "statusMessageTs": status.ts,
    }
    assert "eyes" in reactions(slack, slack.public_channel, ts)
    assert harness.metric("peerbot_dispatcher_conversation_writes_total", outcome="created") == 1
    transport = "socket_mode" if harness.socket_mode else "http"
    assert harness.metric("peerbot_dispatcher_ack_seconds_count", transport=transport) == 1


async def test_retried_event_is_recorded_once(
    slack_standin_factory: Callable[..., SlackStandIn],
    kubernetes_standin: KubernetesStandIn,
    socket_mode: bool,
) -> None:
    # Slack gives up waiting after 5 ms, before the durable write is done, so it retries every time.
    slack = slack_standin_factory(ack_deadline=0.005)
    async with DispatcherHarness(slack, kubernetes_standin, socket_mode=socket_mode) as harness:
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix the tests")
        delivery = await harness.deliver(event)

        # The first attempt timed out; a retry reached the dispatcher and was acknowledged at once.
        assert delivery.attempts[0].outcome == "timeout"
        assert 2 <= delivery.delivered_count <= 1 + slack.max_retries
        assert harness.metric("peerbot_dispatcher_events_total", type="app_mention", outcome="duplicate") >= 1
        assert len(harness.conversations()) == 1
        assert len(status_messages(slack, slack.public_channel, ts_of(event))) == 1


async def test_same_event_on_two_replicas_is_recorded_once(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    first = await make_harness()
    second = await make_harness()
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix the tests")
    deliveries = [first.send(event), second.send(event)]
    await asyncio.gather(*(d.wait_async() for d in deliveries))
    await first.settle()
    await second.settle()

    assert all(d.acked for d in deliveries)
    assert len(first.conversations()) == 1
    assert len(status_messages(slack, slack.public_channel, ts_of(event))) == 1
    eyes = slack.message(slack.public_channel, ts_of(event)).reactions["eyes"]
    assert len(eyes) == 1


async def test_same_follow_up_on_two_replicas_is_recorded_once(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    first, second = await make_harness(), await make_harness(socket_mode=True)
    start = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix the tests")
    await first.deliver(start)
    thread = ts_of(start)
    reply = slack.message_event(slack.human, slack.public_channel, "and the lint", thread_ts=thread)
    deliveries = [first.send(reply), second.send(reply)]
    await asyncio.gather(*(d.wait_async() for d in deliveries))
    await first.settle()
    await second.settle()

    [conversation] = first.conversations()
    assert conversation["spec"]["requestedTs"] == ts_of(reply)
    assert len(status_messages(slack, slack.public_channel, thread)) == 2


async def test_racing_writers_never_move_a_request_backwards(
    kubernetes_standin: KubernetesStandIn, make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    # Two replicas' stores record many follow-ups of one thread at once, in no particular order.
    replicas = [await make_harness(), await make_harness()]
    stores = [replica.app.store for replica in replicas]
    base = 1_700_000_000
    spec = {"team": "T1", "channel": "C1", "threadTs": f"{base}.000001", "user": "U1"}

    def record(ts: str) -> RequestRecord:
        return RequestRecord("t1-c1-race", ConversationSpec.model_validate({**spec, "requestedTs": ts}))

    await stores[0].record(record(f"{base}.000001"))
    stamps = [f"{base + n}.000001" for n in range(1, 21)]
    random.Random(7).shuffle(stamps)
    results = await asyncio.gather(*(stores[index % 2].record(record(ts)) for index, ts in enumerate(stamps)))

    stored = kubernetes_standin.get("conversations", "default", "t1-c1-race")
    assert stored is not None
    assert stored["spec"]["requestedTs"] == f"{base + 20}.000001"
    outcomes = {result.outcome for result in results}
    assert outcomes == {WriteOutcome.UPDATED, WriteOutcome.UNCHANGED}  # races were lost and handled


async def test_the_same_event_id_again_is_acknowledged_without_a_second_request(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    # Over HTTP a byte-identical request is a replay (see the edge tests); Socket Mode has no signatures,
    # so an envelope carrying an event_id already handled shows the event deduplication alone.
    harness = await make_harness(socket_mode=True)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await harness.deliver(event)
    again = await harness.deliver(event)

    assert again.acked
    assert harness.metric("peerbot_dispatcher_events_total", type="app_mention", outcome="duplicate") == 1
    assert len(status_messages(slack, slack.public_channel, ts_of(event))) == 1


async def test_mention_alone_gets_help_and_creates_nothing(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, slack.mention)
    await http.deliver(event)

    [reply] = replies_from_bot(slack, slack.public_channel, ts_of(event))
    assert "How to use Peerbot" in reply.text
    assert http.conversations() == []


# --- follow-ups ------------------------------------------------------------------------------------------


async def test_reply_in_the_thread_is_a_follow_up_that_patches_the_conversation(
    harness: DispatcherHarness, slack: SlackStandIn
) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} add a health check")
    await harness.deliver(first)
    thread = ts_of(first)
    reply = slack.message_event(
        slack.human, slack.public_channel, "also cover it in the docs repo=octo/hello", thread_ts=thread
    )
    await harness.deliver(reply)

    [conversation] = harness.conversations()
    statuses = status_messages(slack, slack.public_channel, thread)
    assert len(statuses) == 2
    assert conversation["spec"]["requestedTs"] == ts_of(reply)
    assert conversation["spec"]["threadTs"] == thread
    assert conversation["spec"]["repository"] == "octo/hello"
    assert conversation["spec"]["statusMessageTs"] == statuses[-1].ts
    assert "eyes" in reactions(slack, slack.public_channel, ts_of(reply))
    assert harness.metric("peerbot_dispatcher_conversation_writes_total", outcome="updated") == 1


async def test_follow_up_while_a_turn_runs_is_queued_behind_it(
    http: DispatcherHarness, slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} refactor")
    await http.deliver(first)
    name = name_for(slack, slack.public_channel, ts_of(first))
    kubernetes_standin.patch(
        "conversations", "default", name, {"status": {"phase": "Running"}}, subresource="status"
    )
    await http.deliver(
        slack.app_mention(
            slack.human, slack.public_channel, f"{slack.mention} and rename it", thread_ts=ts_of(first)
        )
    )

    latest = status_messages(slack, slack.public_channel, ts_of(first))[-1]
    assert "as soon as the current turn ends" in latest.text


async def test_reply_in_a_thread_without_a_conversation_is_ignored(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    parent = slack.post_message(slack.human, slack.public_channel, "lunch?")
    await http.deliver(slack.message_event(slack.human, slack.public_channel, "pizza", thread_ts=parent.ts))

    assert replies_from_bot(slack, slack.public_channel, parent.ts) == []
    assert http.conversations() == []


async def test_follow_ups_without_a_mention_can_be_turned_off(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    harness = await make_harness(follow_up_without_mention=False)
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} refactor")
    await harness.deliver(first)
    await harness.deliver(
        slack.message_event(slack.human, slack.public_channel, "thanks!", thread_ts=ts_of(first))
    )

    [conversation] = harness.conversations()
    assert conversation["spec"]["requestedTs"] == ts_of(first)


async def test_direct_message_is_a_request(http: DispatcherHarness, slack: SlackStandIn) -> None:
    event = slack.message_event(slack.human, slack.im_channel, "fix the flaky test")
    await http.deliver(event)

    [conversation] = http.conversations()
    assert conversation["spec"]["channel"] == slack.im_channel
    assert len(status_messages(slack, slack.im_channel, ts_of(event))) == 1


# --- rules -----------------------------------------------------------------------------------------------


async def test_rate_limit_answers_kindly_and_records_nothing_more(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    bob = slack.add_user("bob")
    slack.set_members(slack.public_channel, [slack.bot_user_id, slack.human, bob])
    harness = await make_harness(rate_limit_per_minute=2, trusted_users=bob, trusted_rate_limit_per_minute=5)
    events = [
        slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} task {n}") for n in range(4)
    ]
    for event in events:
        await harness.deliver(event)

    assert len(harness.conversations()) == 2
    [told] = replies_from_bot(slack, slack.public_channel, ts_of(events[2]))
    assert "try again in" in told.text
    assert "2 requests" in told.text
    # Told once per window; later messages only get a reaction.
    assert replies_from_bot(slack, slack.public_channel, ts_of(events[3])) == []
    assert "hourglass_flowing_sand" in reactions(slack, slack.public_channel, ts_of(events[3]))
    assert harness.metric("peerbot_dispatcher_rate_limit_hits_total") == 2
    for n in range(3):  # a trusted user has a higher limit
        await harness.deliver(slack.app_mention(bob, slack.public_channel, f"{slack.mention} job {n}"))
    assert len(harness.conversations()) == 5


async def test_allow_lists_refuse_politely_and_only_to_the_person(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    other = slack.add_channel("other")
    harness = await make_harness(allowed_channels=other, allowed_users=slack.human)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await harness.deliver(event)

    assert harness.conversations() == []
    assert replies_from_bot(slack, slack.public_channel, ts_of(event)) == []
    [refusal] = ephemeral_texts(slack, slack.public_channel, slack.human)
    assert "not enabled in this channel" in refusal

    stranger = slack.add_user("mallory")
    slack.set_members(other, [slack.bot_user_id, slack.human, stranger])
    await harness.deliver(slack.app_mention(stranger, other, f"{slack.mention} fix"))
    [refusal] = ephemeral_texts(slack, other, stranger)
    assert "allow-list" in refusal
    await harness.deliver(slack.app_mention(slack.human, other, f"{slack.mention} fix"))
    assert len(harness.conversations()) == 1


async def test_private_channels_are_refused_by_default_and_allowed_when_configured(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    closed = await make_harness()
    event = slack.app_mention(slack.human, slack.private_channel, f"{slack.mention} fix")
    await closed.deliver(event)
    assert closed.conversations() == []
    assert "private channels" in ephemeral_texts(slack, slack.private_channel, slack.human)[0]

    await closed.stop()
    opened = await make_harness(allow_private_channels=True)
    await opened.deliver(slack.app_mention(slack.human, slack.private_channel, f"{slack.mention} fix"))
    assert len(opened.conversations()) == 1


async def test_direct_messages_can_be_turned_off(make_harness: MakeHarness, slack: SlackStandIn) -> None:
    harness = await make_harness(allow_direct_messages=False)
    event = slack.message_event(slack.human, slack.im_channel, "fix it")
    await harness.deliver(event)

    assert harness.conversations() == []
    [reply] = replies_from_bot(slack, slack.im_channel, ts_of(event))
    assert "direct messages" in reply.text


async def test_maintenance_answers_and_creates_nothing(
    make_harness: MakeHarness, slack: SlackStandIn
) -> None:
    harness = await make_harness(peerbot_maintenance=True)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await harness.deliver(event)

    assert harness.conversations() == []
    [reply] = replies_from_bot(slack, slack.public_channel, ts_of(event))
    assert "maintenance" in reply.text


# --- commands and buttons --------------------------------------------------------------------------------


async def test_status_stop_and_help_in_the_thread(
    harness: DispatcherHarness, slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} migrate the database")
    await harness.deliver(first)
    thread = ts_of(first)
    name = name_for(slack, slack.public_channel, thread)
    kubernetes_standin.patch(
        "conversations",
        "default",
        name,
        {"status": {"phase": "Running", "job": f"{name}-t1", "startedAt": "2026-01-01T00:00:00Z"}},
        subresource="status",
    )

    await harness.deliver(slack.message_event(slack.human, slack.public_channel, "status", thread_ts=thread))
    status_reply = replies_from_bot(slack, slack.public_channel, thread)[-1]
    assert "Running" in status_reply.text
    assert f"{name}-t1" in status_reply.text

    stop = slack.message_event(slack.human, slack.public_channel, "stop", thread_ts=thread)
    await harness.deliver(stop)
    conversation = harness.conversation(name)
    assert conversation is not None
    assert conversation["spec"]["cancelRequestedAt"]
    assert conversation["spec"]["requestedTs"] == thread  # a command is not a new request
    assert "octagonal_sign" in reactions(slack, slack.public_channel, ts_of(stop))

    await harness.deliver(
        slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} help", thread_ts=thread)
    )
    assert "How to use Peerbot" in replies_from_bot(slack, slack.public_channel, thread)[-1].text


async def test_stop_when_nothing_runs_says_so(
    http: DispatcherHarness, slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await http.deliver(first)
    thread = ts_of(first)
    name = name_for(slack, slack.public_channel, thread)
    kubernetes_standin.patch(
        "conversations",
        "default",
        name,
        {"status": {"phase": "Waiting", "answeredTs": thread}},
        subresource="status",
    )
    await http.deliver(slack.message_event(slack.human, slack.public_channel, "stop", thread_ts=thread))

    assert "Nothing is running" in replies_from_bot(slack, slack.public_channel, thread)[-1].text
    conversation = http.conversation(name)
    assert conversation is not None
    assert "cancelRequestedAt" not in conversation["spec"]


async def test_stop_button_requests_a_cancel_once(harness: DispatcherHarness, slack: SlackStandIn) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} long job")
    await harness.deliver(first)
    thread = ts_of(first)
    [status] = status_messages(slack, slack.public_channel, thread)

    click = slack.block_action(slack.human, slack.public_channel, status.ts, ACTION_STOP)
    delivery = await harness.deliver(click)
    assert delivery.acked
    name = name_for(slack, slack.public_channel, thread)
    conversation = harness.conversation(name)
    assert conversation is not None
    asked = conversation["spec"]["cancelRequestedAt"]
    assert any("Stopping" in text for text in ephemeral_texts(slack, slack.public_channel, slack.human))

    await harness.deliver(slack.block_action(slack.human, slack.public_channel, status.ts, ACTION_STOP))
    again = harness.conversation(name)
    assert again is not None
    assert again["spec"]["cancelRequestedAt"] == asked  # the pending cancel is not asked twice


async def test_continue_button_is_a_follow_up_and_goes_away(
    harness: DispatcherHarness, slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    first = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} big refactor")
    await harness.deliver(first)
    thread = ts_of(first)
    name = name_for(slack, slack.public_channel, thread)
    # The worker paused at the time limit: it answered up to the request and posted the paused message.
    kubernetes_standin.patch(
        "conversations",
        "default",
        name,
        {"status": {"phase": "Waiting", "answeredTs": thread, "attemptedTs": thread}},
        subresource="status",
    )
    worker = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    paused = await worker.chat_postMessage(
        channel=slack.public_channel, thread_ts=thread, **paused_message(conversation=name, limit_minutes=5)
    )
    await worker.session.close() if worker.session else None
    paused_ts = str(paused["ts"])

    click = slack.block_action(slack.human, slack.public_channel, paused_ts, ACTION_CONTINUE)
    await harness.deliver(click)

    conversation = harness.conversation(name)
    assert conversation is not None
    assert conversation["spec"]["requestedTs"] == paused_ts
    statuses = status_messages(slack, slack.public_channel, thread)
    assert len(statuses) == 2
    assert conversation["spec"]["statusMessageTs"] == statuses[-1].ts
    shown = slack.message(slack.public_channel, paused_ts)
    assert ACTION_CONTINUE not in button_values(shown)
    assert "Continuing" in json.dumps(shown.blocks)

    # A second click made before the button went away (a double click, or someone else) changes nothing.
    second = {**click, "trigger_id": click["trigger_id"] + "2"}
    await harness.deliver(second)
    assert len(status_messages(slack, slack.public_channel, thread)) == 2
    assert any(
        "already been picked up" in t for t in ephemeral_texts(slack, slack.public_channel, slack.human)
    )


# --- what a request carries ------------------------------------------------------------------------------


async def test_repository_choice_is_recorded_and_a_bad_one_explained(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    good = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix repo=octo/hello")
    await http.deliver(good)
    [conversation] = http.conversations()
    assert conversation["spec"]["repository"] == "octo/hello"

    bad = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix repo=hello")
    await http.deliver(bad)
    [reply] = replies_from_bot(slack, slack.public_channel, ts_of(bad))
    assert "repo=owner/name" in reply.text
    assert len(http.conversations()) == 1


async def test_long_message_is_recorded_by_reference_and_the_person_told(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} " + "x" * 45_000)
    await http.deliver(event)

    [conversation] = http.conversations()
    assert conversation["spec"]["requestedTs"] == ts_of(event)
    assert "x" * 100 not in json.dumps(conversation)
    texts = [m.text for m in replies_from_bot(slack, slack.public_channel, ts_of(event))]
    assert any("first 40,000" in text for text in texts)


async def test_file_share_is_recorded_as_references_for_the_worker(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    event = slack.message_event(
        slack.human, slack.im_channel, "what is wrong here?", files=[("trace.log", b"Traceback ...")]
    )
    await http.deliver(event)

    [conversation] = http.conversations()
    pending = json.loads(conversation["metadata"]["annotations"][FILES_ANNOTATION])
    [[ref]] = pending.values()
    assert ref["name"] == "trace.log"
    assert ref["id"].startswith("F")
    [status] = status_messages(slack, slack.im_channel, ts_of(event))
    assert "1 attached file noted" in status.text


async def test_edits_deletions_and_bot_messages_are_ignored(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await http.deliver(event)
    ts = ts_of(event)
    await http.deliver(
        slack.edit_message(slack.human, slack.public_channel, ts, f"{slack.mention} fix it now")
    )
    await http.deliver(slack.bot_message(slack.public_channel, "@peerbotai deploy", thread_ts=ts))
    await http.deliver(slack.delete_message(slack.public_channel, ts))

    [conversation] = http.conversations()
    assert conversation["spec"]["requestedTs"] == ts
    metric = "peerbot_dispatcher_events_total"
    assert http.metric(metric, type="message", outcome="ignored_edited") == 1
    assert http.metric(metric, type="message", outcome="ignored_deleted") == 1
    assert http.metric(metric, type="message", outcome="ignored_bot") == 1
