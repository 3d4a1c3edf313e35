"""Running Peerbot in production, against the stand-ins: health endpoints, metrics that move, maintenance end
to end, feature switches, the Slack plain-text fallback, open circuits and degraded-mode messages.

The operator runs for real under kopf (``kopf run -m peerbot.operator``), the dispatcher through
:class:`~peerbot.testing.dispatcher.DispatcherHarness`, the worker through
:class:`~peerbot.testing.worker.WorkerWorld`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from kopf.testing import KopfRunner
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import __version__
from peerbot.dispatcher.service import Where
from peerbot.operator.handlers import REGISTRY
from peerbot.testing.claude import Reply
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from peerbot.testing.worker import Thread as WorkerThread
from peerbot.testing.worker import WorkerWorld
from peerbot.worker.slack_io import SlackThread
from tests.integration.test_operator import Thread

NAMESPACE = "default"
WAIT = 10.0
METRICS_TOKEN = "a-long-random-metrics-token-for-tests"


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.text()


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def metric_becomes(
    url: str,
    name: str,
    value: float,
    timeout: float = WAIT,  # noqa: ASYNC109 (a bounded wait)
    **labels: str,
) -> None:
    """Scrape ``url``/metrics until ``name{labels}`` is ``value``; fail after ``timeout`` seconds."""
    import asyncio

    last = None
    async with asyncio.timeout(timeout):
        while (last := sample((await get(url + "/metrics"))[1], name, **labels)) != value:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a scrape interval (Prometheus polls too), bounded by the timeout
    assert last == value


# --- the operator -----------------------------------------------------------------------------------------


@pytest.fixture
def operator(
    monkeypatch: pytest.MonkeyPatch,
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    kubeconfig: Path,
    unused_tcp_port_factory: Callable[[], int],
) -> Callable[..., Any]:
    """``with operator(**env) as url``: ``kopf run -m peerbot.operator``, its /health at ``url``."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_standin.bot_token)
    monkeypatch.setenv("SLACK_API_URL", slack_standin.api_url)
    monkeypatch.setenv("WORKER_IMAGE", "registry.test/peerbot-worker:test")
    monkeypatch.setenv("PEERBOT_NAMESPACE", NAMESPACE)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubernetes_standin.create(
        "serviceaccounts",
        {"metadata": {"name": "peerbot-worker"}, "automountServiceAccountToken": False},
        NAMESPACE,
    )

    @contextlib.contextmanager
    def run(**env: str) -> Iterator[str]:
        port = unused_tcp_port_factory()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPERATOR_PORT", str(port))
            for name, value in env.items():
                patch.setenv(name, value)
            settings = kopf.OperatorSettings()
            settings.batching.idle_timeout = 0.2
            settings.batching.exit_timeout = 0.2
            args = ["run", "--standalone", "--namespace", NAMESPACE, "-m", "peerbot.operator"]
            failed = False
            with KopfRunner(args, registry=REGISTRY, settings=settings, timeout=10) as runner:
                kubernetes_standin.wait_for_watch("conversations", NAMESPACE, timeout=WAIT)
                kubernetes_standin.wait_for_watch("jobs", NAMESPACE, timeout=WAIT)
                try:
                    yield f"http://127.0.0.1:{port}"
                except BaseException:
                    failed = True
                    raise
        if failed:
            print(runner.output)  # what the operator logged, shown with the failure
        assert runner.exception is None, runner.output

    return run


async def test_operator_health_ready_and_metrics_behind_a_token(operator: Callable[..., Any]) -> None:
    with operator(METRICS_AUTH_TOKEN=METRICS_TOKEN) as url:
        status, body = await get(url + "/health")
        health = json.loads(body)
        assert status == 200
        assert health["status"] == "ok"
        assert health["service"] == "operator"
        assert health["version"] == __version__
        assert health["uptime_seconds"] >= 0

        status, body = await get(url + "/ready")
        ready = json.loads(body)
        assert status == 200, body
        assert ready["checks"] == {"kubernetes": "ok", "slack": "ok", "circuit:slack": "ok"}
        assert ready["maintenance"] is False

        assert (await get(url + "/metrics"))[0] == 401
        status, text = await get(url + "/metrics", METRICS_TOKEN)
        assert status == 200
        assert "peerbot_operator_conversations" in text
        assert sample(text, "peerbot_operator_circuit_breaker_state", dependency="slack") == 0


async def test_operator_ready_reports_a_failed_dependency(
    operator: Callable[..., Any], unused_tcp_port_factory: Callable[[], int]
) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}/api/"
    with operator(SLACK_API_URL=dead) as url:
        status, body = await get(url + "/ready")
        ready = json.loads(body)
        assert status == 503
        assert ready["ready"] is False
        assert ready["status"] == "degraded"
        assert ready["checks"]["kubernetes"] == "ok"
        assert "Slack is unreachable" in ready["checks"]["slack"]
        assert (await get(url + "/health"))[0] == 200  # liveness never depends on a dependency


async def test_maintenance_end_to_end(
    operator: Callable[..., Any],
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    kubeconfig: Path,
) -> None:
    slack, kube = slack_standin, kubernetes_standin
    # The dispatcher, in maintenance, answers and records nothing.
    async with DispatcherHarness(slack, kube, peerbot_maintenance=True) as harness:
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix the build")
        await harness.deliver(event)
        assert harness.conversations() == []
        assert (
            harness.metric("peerbot_dispatcher_events_total", type="app_mention", outcome="maintenance") == 1
        )
        assert harness.metric("peerbot_dispatcher_maintenance") == 1
        ready = json.loads((await get(harness.app.url + "/ready"))[1])
        assert ready["maintenance"] is True
    thread_ts = event["event"]["ts"]
    assert any("maintenance" in m.text for m in slack.thread(slack.public_channel, thread_ts)[1:])

    # A request recorded before maintenance began: the operator holds it, says so once, starts nothing.
    thread = Thread(slack, kube)
    with operator(PEERBOT_MAINTENANCE="true") as url:
        # As the dispatcher records it: with its status message (a turn waits a moment for one).
        status = slack.post_message(slack.bot_user_id, thread.channel, "Queued", thread_ts=thread.thread_ts)
        thread.create(statusMessageTs=status.ts)
        held = thread.wait_status(
            lambda s: any(c.get("type") == "Maintenance" for c in s.get("conditions") or [])
        )
        assert held["phase"] == "Queued"
        text = (await get(url + "/metrics"))[1]
        assert sample(text, "peerbot_operator_maintenance") == 1
        assert sample(text, "peerbot_operator_jobs_total", outcome="started") == 0
    assert kube.objects("jobs", NAMESPACE) == []
    notices = [m for m in slack.thread(thread.channel, thread.thread_ts) if "maintenance" in m.text]
    assert len(notices) == 1  # told once, however often it was reconciled

    # Maintenance off: the held turn starts by itself, and the condition goes.
    with operator(PEERBOT_MAINTENANCE="false") as url:
        started = thread.wait_status(lambda s: s.get("phase") == "Running")
        assert not [c for c in started.get("conditions") or [] if c["type"] == "Maintenance"]
        assert kube.get("jobs", NAMESPACE, thread.job(1)) is not None
        text = (await get(url + "/metrics"))[1]
        assert sample(text, "peerbot_operator_jobs_total", outcome="started") == 1
        # The phase gauge counts kopf's index, which follows the watch: wait (bounded) for it to catch up.
        await metric_becomes(url, "peerbot_operator_conversations", 1, phase="Running")


# --- the dispatcher ---------------------------------------------------------------------------------------


async def test_dispatcher_feature_switches_and_first_reply_metric(
    slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    slack = slack_standin
    async with DispatcherHarness(slack, kubernetes_standin) as harness:
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} one")
        await harness.deliver(event)
        assert harness.metric("peerbot_dispatcher_first_reply_seconds_count") == 1
        assert slack.message(slack.public_channel, event["event"]["ts"]).reactions
    quiet = {"enable_status_reactions": False, "enable_progress_updates": False}
    async with DispatcherHarness(slack, kubernetes_standin, **quiet) as harness:
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} two")
        await harness.deliver(event)
        ts = event["event"]["ts"]
        assert len(harness.conversations()) == 2  # still recorded
        assert not slack.message(slack.public_channel, ts).reactions  # no 👀
        assert slack.thread(slack.public_channel, ts)[1:] == []  # no status message
        assert harness.metric("peerbot_dispatcher_first_reply_seconds_count") == 0


async def test_dispatcher_plain_text_fallback_is_counted(
    slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    slack = slack_standin
    async with DispatcherHarness(slack, kubernetes_standin) as harness:
        parent = slack.post_message(slack.human, slack.public_channel, "hello")
        where = Where(slack.public_channel, parent.ts, parent.ts, slack.human)
        rejected = {"text": "the whole answer", "blocks": [{"type": "no_such_block", "text": "x"}]}
        ts = await harness.app.dispatcher.post(where, rejected)
        assert ts is not None
        posted = slack.message(slack.public_channel, ts)
        assert posted.text == "the whole answer"
        assert not posted.blocks
        total = sum(
            harness.metric("peerbot_dispatcher_slack_fallbacks_total", reason=reason)
            for reason in ("invalid_blocks", "invalid_blocks_format")
        )
        assert total == 1


async def test_dispatcher_circuit_opens_when_slack_keeps_failing(
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}/api/"
    async with DispatcherHarness(slack_standin, kubernetes_standin, slack_api_url=dead) as harness:
        dispatcher = harness.app.dispatcher
        dispatcher.breakers["slack"].threshold = 2  # fewer failures to wait for than the default five
        where = Where("C1", "1700000000.000001", "1700000000.000001", "U1")
        for _ in range(2):
            assert await dispatcher.post(where, {"text": "hi"}) is None
        assert harness.metric("peerbot_dispatcher_circuit_breaker_state", dependency="slack") == 2
        assert harness.metric("peerbot_dispatcher_circuit_breaker_opened_total", dependency="slack") == 1
        assert (
            harness.metric("peerbot_dispatcher_retries_total", dependency="slack", reason="connection") >= 2
        )
        assert await dispatcher.post(where, {"text": "hi"}) is None  # refused at once while open
        assert harness.metric("peerbot_dispatcher_errors_total", kind="slack_circuit_open") == 1
        status, body = await get(harness.app.url + "/ready")
        assert status == 503
        assert "circuit open after 2 failures" in json.loads(body)["checks"]["circuit:slack"]


# --- the worker -------------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path) as world:
        world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
        yield world


def status_texts(world: WorkerWorld, thread: WorkerThread) -> str:
    """Everything the thread's bot messages ever said, edits included."""
    parts = []
    for message in world.slack.thread(thread.channel, thread.ts):
        if message.user == world.slack.bot_user_id:
            for version in (*message.history, message):
                parts.append(version.text + json.dumps(list(version.blocks)))
    return "\n".join(parts)


async def test_degraded_mode_message_reaches_the_thread_and_retries_are_reported(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot run the tests")
    world.claude.load([Reply.error(529), Reply.error(529), Reply.bash("echo ok"), Reply.text("All good.")])

    async def until_the_person_is_told(_seconds: float) -> None:
        # Instead of the backoff: wait (bounded) until the degraded-mode message is in the thread.
        await world.slack.wait_until_async(
            lambda: "Claude is overloaded right now" in status_texts(world, thread), timeout=5.0
        )

    run = await world.run_turn(thread, sleep=until_the_person_is_told)
    assert run.result is not None
    assert run.result.error is None
    shown = status_texts(world, thread)
    assert "Claude is overloaded right now" in shown
    assert "I will keep trying for up to" in shown
    stats = run.result.stats
    assert stats is not None
    assert stats.retries == {"anthropic": 2}
    assert stats.tools["bash"].calls == 1
    assert stats.first_progress_seconds is not None
    assert stats.duration_seconds is not None


async def test_worker_feature_switches(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hello")
    world.claude.load([Reply.text("Hello!")])
    run = await world.run_turn(
        thread, settings={"enable_status_reactions": False, "enable_progress_updates": False}
    )
    assert run.result is not None
    assert run.result.error is None
    assert not world.slack.message(thread.channel, thread.ts).reactions
    bot = [m for m in world.slack.thread(thread.channel, thread.ts) if m.user == world.slack.bot_user_id]
    assert len(bot) == 1
    assert "Hello!" in bot[0].text + json.dumps(list(bot[0].blocks))


async def test_worker_plain_text_fallback_is_counted_and_logged(world: WorkerWorld) -> None:
    from structlog.testing import capture_logs

    thread = world.new_thread("@peerbot hi")
    reasons: list[str] = []
    client = AsyncWebClient(token=world.slack.bot_token, base_url=world.slack.api_url)
    slack_thread = SlackThread(client, thread.channel, thread.ts, redact=str, on_fallback=reasons.append)
    with capture_logs() as logs:
        ts = await slack_thread.post({"text": "kept", "blocks": [{"type": "no_such_block"}]})
    assert ts is not None
    assert world.slack.message(thread.channel, ts).text == "kept"
    assert reasons
    assert reasons[0].startswith("invalid_blocks")
    assert any(line["event"] == "slack_message_rejected" for line in logs)
