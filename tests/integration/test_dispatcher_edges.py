"""The dispatcher at its edges: forged, stale and replayed requests, bad input, a Kubernetes API that fails
or hangs, the probe and metrics endpoints, and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from peerbot.cli import main
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from peerbot.testing.slack.events import signed_headers

#: A fresh interpreter imports Bolt, kubernetes_asyncio and pydantic in a second or two.
PROCESS_START_SECONDS = 20.0
PROCESS_STOP_SECONDS = 10.0


@pytest.fixture
def slack(slack_standin_factory: Callable[..., SlackStandIn]) -> SlackStandIn:
    return slack_standin_factory()


@pytest.fixture
async def http(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> AsyncIterator[DispatcherHarness]:
    async with DispatcherHarness(slack, kubernetes_standin) as harness:
        yield harness


def bot_replies(slack: SlackStandIn, channel: str, thread_ts: str) -> list[str]:
    return [m.text for m in slack.thread(channel, thread_ts) if m.user == slack.bot_user_id and m.is_reply]


async def post_signed(harness: DispatcherHarness, body: bytes, content_type: str = "application/json") -> int:
    """Send ``body`` to /slack/events correctly signed, as Slack would; returns the HTTP status."""
    headers = signed_headers(harness.slack.signing_secret, body, content_type=content_type)
    async with (
        aiohttp.ClientSession() as session,
        session.post(harness.app.events_url, data=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


# --- signatures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("send", ["send_forged_event", "send_stale_event", "send_unsigned_event"])
async def test_forged_stale_and_unsigned_requests_are_refused(
    http: DispatcherHarness, slack: SlackStandIn, send: str
) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} rm -rf")
    delivery = await getattr(slack, send)(http.app.events_url, event).wait_async()
    await http.settle()

    assert delivery.last.status == 401
    assert http.conversations() == []
    assert bot_replies(slack, slack.public_channel, event["event"]["ts"]) == []


async def test_replayed_request_is_ignored(http: DispatcherHarness, slack: SlackStandIn) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    original = await http.deliver(event)
    replayed = await slack.replay(original).wait_async()
    await http.settle()

    assert replayed.last.status == 200
    assert len(http.conversations()) == 1
    assert len(bot_replies(slack, slack.public_channel, event["event"]["ts"])) == 1
    assert http.metric("peerbot_dispatcher_events_total", type="app_mention", outcome="replayed") == 1


async def test_replayed_stop_click_is_ignored(http: DispatcherHarness, slack: SlackStandIn) -> None:
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    await http.deliver(event)
    status_ts = slack.thread(slack.public_channel, event["event"]["ts"])[1].ts
    click = await http.deliver(
        slack.block_action(slack.human, slack.public_channel, status_ts, "peerbot_stop")
    )
    await slack.replay(click).wait_async()
    await http.settle()

    assert http.metric("peerbot_dispatcher_events_total", type="block_actions", outcome="replayed") == 1


async def test_url_verification_is_answered(http: DispatcherHarness, slack: SlackStandIn) -> None:
    delivery = await slack.send_url_verification(http.app.events_url).wait_async()
    assert delivery.last.status == 200
    assert delivery.payload["challenge"] in delivery.last.body.decode()


async def test_slash_command_answers_with_help_only_to_the_person(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    command = slack.slash_command(slack.human, slack.public_channel, "/peerbot")
    delivery = await http.deliver(command)

    assert delivery.last.status == 200
    answer = json.loads(delivery.last.body)
    assert answer["response_type"] == "ephemeral"
    assert "How to use Peerbot" in answer["text"]
    assert http.conversations() == []


# --- bad input -------------------------------------------------------------------------------------------


async def test_malformed_and_unknown_payloads_are_acknowledged_counted_and_harmless(
    http: DispatcherHarness, slack: SlackStandIn
) -> None:
    envelope = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
    missing_user = json.loads(json.dumps(envelope))
    missing_user["event_id"] = "EvMALFORMED1"
    del missing_user["event"]["user"]
    unknown_type = {
        **envelope,
        "event_id": "EvUNKNOWN001",
        "event": {"type": "emoji_changed", "subtype": "add"},
    }
    no_event = {"type": "event_callback", "event_id": "EvNOEVENT001", "team_id": slack.team_id}
    statuses = [
        await post_signed(http, json.dumps(missing_user).encode()),
        await post_signed(http, json.dumps(unknown_type).encode()),
        await post_signed(http, json.dumps(no_event).encode()),
        await post_signed(http, b"{this is not json"),
        await post_signed(http, b"payload=%7Bnot-json", "application/x-www-form-urlencoded"),
        await post_signed(
            http, json.dumps({"type": "block_actions", "actions": [{"action_id": "x"}]}).encode()
        ),
    ]
    await http.settle()

    assert all(status == 200 for status in statuses), statuses
    assert http.conversations() == []
    assert bot_replies(slack, slack.public_channel, envelope["event"]["ts"]) == []
    metric = "peerbot_dispatcher_events_total"
    assert http.metric(metric, type="app_mention", outcome="ignored_malformed") == 1
    assert http.metric(metric, type="emoji_changed", outcome="ignored_unhandled") == 1
    assert http.metric(metric, type="unknown", outcome="rejected_malformed") == 2


async def test_unparseable_body_with_a_bad_signature_is_refused(http: DispatcherHarness) -> None:
    body = b"{this is not json"
    headers = signed_headers("not-the-secret", body, content_type="application/json")
    async with (
        aiohttp.ClientSession() as session,
        session.post(http.app.events_url, data=body, headers=headers) as response,
    ):
        assert response.status == 401
    assert http.metric("peerbot_dispatcher_events_total", type="unknown", outcome="rejected_malformed") == 0


async def test_socket_mode_envelopes_of_unknown_kinds_are_acknowledged(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    async with DispatcherHarness(slack, kubernetes_standin, socket_mode=True) as harness:
        envelope = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
        weird = {**envelope, "event": {"type": "tokens_revoked", "tokens": {}}}
        delivery = await harness.deliver(weird)
        assert delivery.acked
        assert delivery.delivered_count == 1
        assert harness.conversations() == []


# --- the durable write fails -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """An HTTP "server" that accepts connections and never answers: a hung Kubernetes API."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_hung_kubernetes_api_still_gets_an_ack_in_time_and_the_person_is_told(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    async with (
        black_hole() as url,
        DispatcherHarness(slack, kubernetes_standin, api_url=url, record_timeout_seconds=0.3) as harness,
    ):
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
        started = time.monotonic()
        delivery = await harness.deliver(event)

        assert delivery.acked
        assert delivery.delivered_count == 1
        assert delivery.last.acked_at is not None
        assert delivery.last.acked_at - delivery.last.sent_at < 1.0
        assert time.monotonic() - started < 3.0
        [reply] = bot_replies(slack, slack.public_channel, event["event"]["ts"])
        assert "I could not record your request" in reply
        assert "did not answer in time" in reply
        assert "try again in a minute" in reply
        assert harness.metric("peerbot_dispatcher_errors_total", kind="kubernetes_timeout") == 1
    assert kubernetes_standin.objects("conversations", "default") == []


@pytest.mark.parametrize("socket_mode", [False, True])
async def test_an_unreachable_kubernetes_api_is_explained_in_the_thread(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn, socket_mode: bool
) -> None:
    async with DispatcherHarness(
        slack, kubernetes_standin, api_url=closed_port(), socket_mode=socket_mode
    ) as harness:
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
        delivery = await harness.deliver(event)

        assert delivery.acked
        [reply] = bot_replies(slack, slack.public_channel, event["event"]["ts"])
        assert "unreachable" in reply
        assert harness.metric("peerbot_dispatcher_conversation_writes_total", outcome="failed") == 1


# --- endpoints -------------------------------------------------------------------------------------------


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


@pytest.mark.parametrize("socket_mode", [False, True])
async def test_health_ready_and_metrics(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn, socket_mode: bool
) -> None:
    async with DispatcherHarness(slack, kubernetes_standin, socket_mode=socket_mode) as harness:
        await harness.deliver(slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix"))
        status, _, body = await get(harness.app.url + "/health")
        assert status == 200
        assert json.loads(body)["status"] == "ok"  # plus service, version and uptime

        status, _, body = await get(harness.app.url + "/ready")
        assert status == 200, body
        checks = json.loads(body)["checks"]
        assert checks["kubernetes"] == checks["slack"] == "ok"
        if socket_mode:
            assert checks["socket_mode"] == "ok"

        status, content_type, body = await get(harness.app.url + "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        for name in (
            'peerbot_dispatcher_events_total{outcome="recorded",type="app_mention"} 1.0',
            "peerbot_dispatcher_ack_seconds_bucket",
            "peerbot_dispatcher_rate_limit_hits_total",
            'peerbot_dispatcher_conversation_writes_total{outcome="created"} 1.0',
            "peerbot_dispatcher_errors_total",
        ):
            assert name in body


async def test_not_ready_when_kubernetes_or_slack_is_not_usable(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn
) -> None:
    async with DispatcherHarness(
        slack, kubernetes_standin, api_url=closed_port(), slack_bot_token="xoxb-0-0-not-a-real-token"
    ) as harness:
        status, _, body = await get(harness.app.url + "/ready")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert "unreachable" in checks["kubernetes"]
        assert "invalid_auth" in checks["slack"]
        assert "SLACK_BOT_TOKEN" in checks["slack"]
        status, _, _ = await get(harness.app.url + "/health")
        assert status == 200


# --- the command line ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_peerbot_dispatcher_serves_and_stops_cleanly_on_sigterm(
    slack: SlackStandIn, kubernetes_standin: KubernetesStandIn, tmp_path: pathlib.Path
) -> None:
    kubeconfig = kubernetes_standin.write_kubeconfig(tmp_path / "kubeconfig")
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_API_URL": slack.api_url,
        "SLACK_APP_TOKEN": slack.app_token,
        "PORT": str(port),
        "LOG_FORMAT": "json",
    }
    env.pop("SLACK_SIGNING_SECRET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "peerbot.cli", "dispatcher"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        slack.wait_for_socket_connection(timeout=PROCESS_START_SECONDS)
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} fix")
        assert slack.send_socket_event(event).wait().acked
        slack.wait_until(
            lambda: len(kubernetes_standin.objects("conversations", "default")) == 1,
            description="the Conversation",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            assert json.load(response)["ready"] is True
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=PROCESS_STOP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "dispatcher stopped" in output
    assert slack.bot_token not in output


def test_cli_refuses_to_start_without_a_way_to_receive_events(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1-2-abc")
    assert main(["dispatcher"]) == 2
    err = capsys.readouterr().err
    assert "SLACK_APP_TOKEN is missing" in err
    assert "SLACK_SIGNING_SECRET" in err


def test_cli_names_a_bad_allow_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1-2-abc")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-abc")
    monkeypatch.setenv("ALLOWED_USERS", "alice,bob")
    assert main(["dispatcher"]) == 2
    assert "ALLOWED_USERS is not valid" in capsys.readouterr().err
