"""Slack's deliveries at their worst, through the real dispatchers and the real operator.

- **Re-delivered to two replicas**: each event is sent four times at once (the original and Slack's three
  re-deliveries, ``X-Slack-Retry-Num`` 1–3, each signed anew), spread over two dispatcher replicas. Each
  thread must end with one Conversation, one status message and one Job.
- **Five replies within a second**: while the thread's first turn runs, five replies arrive within a
  second. The test plays the kubelet: a worker reads the thread when its pod starts and answers up to the
  newest message it saw; a Job runs at least until the burst is over (a turn takes longer than a second),
  except the first one, which ends at a random point of the burst. Every reply must be answered, in order,
  by at most two Jobs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import pytest

from peerbot import constants
from peerbot.naming import conversation_name
from peerbot.operator.jobs import ANNOTATION_REQUESTED_TS
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from peerbot.testing.slack.events import signed_headers
from tests.faults.chaos import Kubelet
from tests.faults.conftest import NAMESPACE, Operator, Recorder

#: Threads whose first event is re-delivered.
REDELIVERED_EVENTS: Final = 8
#: Slack re-delivers an event it got no timely answer for three times.
SLACK_RETRIES: Final = 3
REPLIES: Final = 5
#: Per round of the five-replies burst: after how many replies the first turn ends (5: after the burst).
FIRST_TURN_ENDS_AFTER: Final = (0, 1, 3, 5)
REPLY_ROUNDS: Final = len(FIRST_TURN_ENDS_AFTER)
#: The five replies are spread over this long.
BURST_SECONDS: Final = 0.8
#: How long the world waits for the dispatchers and the operator.
WAIT_SECONDS: Final = 15.0


@pytest.fixture
async def replicas(
    slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> AsyncIterator[tuple[DispatcherHarness, DispatcherHarness]]:
    # The per-user rate limit is not what these tests are about (one person sends everything here).
    async with (
        DispatcherHarness(slack_standin, kubernetes_standin, rate_limit_per_minute=10_000) as first,
        DispatcherHarness(slack_standin, kubernetes_standin, rate_limit_per_minute=10_000) as second,
    ):
        yield first, second


async def post_as_slack(replica: DispatcherHarness, body: bytes, retry: int) -> tuple[int, float]:
    """One delivery of ``body`` to a replica, as Slack sends it (retries carry their number and reason)."""
    headers = signed_headers(replica.slack.signing_secret, body, content_type="application/json")
    if retry:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(replica.app.events_url, data=body, headers=headers) as response,
    ):
        await response.read()
        return response.status, time.monotonic() - started


def waiting_after(conversation: dict[str, Any] | None, last: str | None) -> bool:
    """The Conversation waits for a reply, having answered ``last`` (any message, for ``None``)."""
    status = (conversation or {}).get("status") or {}
    return bool(status.get("phase") == "Waiting" and (last is None or status.get("answeredTs") == last))


def jobs_of(kube: KubernetesStandIn, name: str) -> dict[str, dict[str, Any]]:
    selector = f"{constants.LABEL_CONVERSATION}={name}"
    return {job["metadata"]["name"]: job for job in kube.objects("jobs", NAMESPACE, label_selector=selector)}


async def test_redelivered_events_on_two_replicas_make_one_conversation_and_one_job(
    replicas: tuple[DispatcherHarness, DispatcherHarness],
    operator: Operator,
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    ledger: Recorder,
) -> None:
    slack, kube = slack_standin, kubernetes_standin
    kubelet = Kubelet(kube, slack)
    rng = random.Random(20)
    with operator():
        events = [
            slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} task {n}")
            for n in range(REDELIVERED_EVENTS)
        ]
        deliveries = []
        for event in events:
            body = json.dumps(event).encode()
            for retry in range(SLACK_RETRIES + 1):
                deliveries.append(post_as_slack(rng.choice(replicas), body, retry))
        answers = await asyncio.gather(*deliveries)
        for replica in replicas:
            await replica.settle()

        threads = [str(event["event"]["ts"]) for event in events]
        names = [conversation_name(slack.team_id, slack.public_channel, ts) for ts in threads]
        for name, thread_ts in zip(names, threads, strict=True):
            await kube.await_for("jobs", NAMESPACE, f"{name}-t1", lambda job: job, timeout=WAIT_SECONDS)
            kubelet.start(f"{name}-t1", slack.public_channel, thread_ts)
            kubelet.finish(f"{name}-t1")
        for name in names:
            await kube.await_for(
                "conversations",
                NAMESPACE,
                name,
                lambda c: waiting_after(c, None),
                timeout=WAIT_SECONDS,
            )

    deadline = constants.SLACK_ACK_DEADLINE_SECONDS
    unacknowledged = [
        (status, seconds) for status, seconds in answers if status != 200 or seconds >= deadline
    ]
    survived = 0
    problems: dict[str, str] = {}
    conversations = {c["metadata"]["name"] for c in kube.objects("conversations", NAMESPACE)}
    for thread_ts, name in zip(threads, names, strict=True):
        thread = slack.thread(slack.public_channel, thread_ts)
        statuses = [m for m in thread if m.user == slack.bot_user_id and "Queued" in m.text]
        jobs = sorted(jobs_of(kube, name))
        if name in conversations and len(statuses) == 1 and jobs == [f"{name}-t1"]:
            survived += 1
        else:
            problems[name] = (
                f"conversation {name in conversations}, {len(statuses)} status messages, Jobs {jobs}"
            )

    ledger.record(
        f"Slack re-delivers an event {SLACK_RETRIES} times (X-Slack-Retry-Num 1–3) and the 4 deliveries "
        "reach two dispatcher replicas at once; the real operator runs",
        tried=REDELIVERED_EVENTS,
        survived=survived,
        lost=REDELIVERED_EVENTS - len(conversations & set(names)),
    )
    assert not unacknowledged, unacknowledged
    assert len(conversations) == REDELIVERED_EVENTS
    assert not problems, problems


async def test_five_replies_within_a_second_are_all_answered_in_order_in_at_most_two_jobs(
    replicas: tuple[DispatcherHarness, DispatcherHarness],
    operator: Operator,
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    ledger: Recorder,
) -> None:
    slack, kube = slack_standin, kubernetes_standin
    dispatcher = replicas[0]
    kubelet = Kubelet(kube, slack)
    outcomes: list[str] = []
    jobs_for_replies: list[int] = []
    with operator():
        for round_number in range(REPLY_ROUNDS):
            text = f"{slack.mention} round {round_number}"
            mention = slack.app_mention(slack.human, slack.public_channel, text)
            thread_ts = mention["event"]["ts"]
            name = conversation_name(slack.team_id, slack.public_channel, thread_ts)
            await dispatcher.deliver(mention)

            first_turn_may_end = asyncio.Event()
            burst_over = asyncio.Event()

            async def play_kubelet(
                name: str = name,
                thread_ts: str = thread_ts,
                first_turn_may_end: asyncio.Event = first_turn_may_end,
                burst_over: asyncio.Event = burst_over,
            ) -> None:
                turn = 1
                while True:
                    job = f"{name}-t{turn}"
                    await kube.await_for("jobs", NAMESPACE, job, lambda j: j, timeout=WAIT_SECONDS)
                    await asyncio.to_thread(kubelet.start, job, slack.public_channel, thread_ts)
                    await (first_turn_may_end if turn == 1 else burst_over).wait()
                    await asyncio.to_thread(kubelet.finish, job)
                    turn += 1

            kubelet_task = asyncio.create_task(play_kubelet())
            await kube.await_for("jobs", NAMESPACE, f"{name}-t1", lambda j: j, timeout=WAIT_SECONDS)
            first_turn_ends_after = FIRST_TURN_ENDS_AFTER[round_number]
            replies: list[str] = []
            sent = []
            started = time.monotonic()
            for n in range(REPLIES):
                if n == first_turn_ends_after:
                    first_turn_may_end.set()
                event = slack.message_event(
                    slack.human, slack.public_channel, f"and {n}", thread_ts=thread_ts
                )
                replies.append(event["event"]["ts"])
                sent.append(dispatcher.send(event))
                await asyncio.sleep(BURST_SECONDS / REPLIES)  # pacing the burst, not synchronisation
            burst_seconds = time.monotonic() - started
            first_turn_may_end.set()
            for delivery in sent:
                await delivery.wait_async()
            await dispatcher.settle()
            burst_over.set()
            try:
                await kube.await_for(
                    "conversations",
                    NAMESPACE,
                    name,
                    functools.partial(waiting_after, last=replies[-1]),
                    timeout=WAIT_SECONDS,
                )
            finally:
                kubelet_task.cancel()
                await asyncio.gather(kubelet_task, return_exceptions=True)

            jobs = jobs_of(kube, name)
            order = sorted(jobs, key=lambda job: int(job.rsplit("-t", 1)[1]))
            asked = [jobs[job]["metadata"]["annotations"][ANNOTATION_REQUESTED_TS] for job in order]
            answered = [kubelet.saw[job] for job in order]
            for_replies = order[1:]
            jobs_for_replies.append(len(for_replies))
            if (
                burst_seconds < 1.0
                and len(for_replies) <= 2
                and asked == sorted(asked, key=float)
                and answered == sorted(answered, key=float)
                and answered[-1] == replies[-1]
            ):
                outcomes.append("ok")
            else:
                outcomes.append(f"round {round_number}: Jobs {order}, asked {asked}, answered {answered}")

    ledger.record(
        "five replies in one thread within a second while its turn runs (the first turn ending after "
        f"{', '.join(map(str, FIRST_TURN_ENDS_AFTER))} of them); Jobs for the replies: {jobs_for_replies}",
        tried=REPLY_ROUNDS,
        survived=outcomes.count("ok"),
        lost=REPLY_ROUNDS - outcomes.count("ok"),
    )
    assert outcomes == ["ok"] * REPLY_ROUNDS, outcomes
