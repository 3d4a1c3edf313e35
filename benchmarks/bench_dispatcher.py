"""Dispatcher benchmark: how fast Slack gets its acknowledgement, and whether any request is lost or doubled.

For each transport (HTTP mode, Socket Mode) and each rate (50 and 200 events a second), the Slack stand-in
sends a paced stream of events (new mentions; one in five a follow-up reply in a thread at least a second
old) to

- the real dispatcher, which writes each request to the Kubernetes stand-in before acknowledging it, and
- a bare Bolt ``AsyncApp`` that only acknowledges (the floor: Bolt, the transport and the stand-in),

and measures, as Slack sees it, the time from sending an event to receiving its acknowledgement. It
reports p50/p99 for both, their ratio (what our own work costs), and for the dispatcher the requests lost
(a thread whose Conversation or status messages do not show every request, or an event never
acknowledged) and duplicated (a request announced twice). Targets: p99 under 250 ms at 200 events a
second, 0 lost, 0 duplicated.

The stand-ins run in a process of their own, as Slack and the API server are other machines in
production: in one process, their work and the dispatcher's would queue for the same interpreter lock
and the benchmark would measure the stand-ins. The dispatcher and the bare app run in this process.

Run ``python -m benchmarks.bench_dispatcher`` (about a minute and a half) or with ``--quick`` (a smoke run
of a few seconds, for CI). Everything runs on 127.0.0.1; results go to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import pathlib
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Final

from aiohttp import web
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.dispatcher.app import build_dispatcher
from peerbot.logs import configure_logging
from peerbot.naming import conversation_name
from peerbot.settings import DispatcherSettings, load_settings

REPOSITORY: Final = pathlib.Path(__file__).resolve().parents[1]
CRD: Final = REPOSITORY / "charts" / "peerbot" / "crds" / "conversations.yaml"
RESULTS: Final = REPOSITORY / "benchmarks" / "results"
NAMESPACE: Final = "default"
RATES: Final = (50, 200)
TRANSPORTS: Final = ("http", "socket_mode")
#: Seconds of paced events per measurement: long enough for a stable p99 (2,000 samples at 200/s).
DURATION_SECONDS: Final = 10.0
QUICK_DURATION_SECONDS: Final = 1.0
#: Events sent (and waited for) before measuring: connections, auth.test and caches warm up.
WARMUP_EVENTS: Final = 10
#: One event in this many is a reply in an earlier thread (a follow-up: a read and a guarded patch).
FOLLOW_UP_EVERY: Final = 5
#: How soon after a thread starts a person replies in it, at the earliest.
HUMAN_REPLY_SECONDS: Final = 1.0
#: Bounds on waiting: for Slack to be done with every event, for the dispatcher's follow-up work, for the
#: stand-in process to answer a command, and for it to stop.
DELIVERY_TIMEOUT_SECONDS: Final = 60.0
SETTLE_TIMEOUT_SECONDS: Final = 60.0
COMMAND_TIMEOUT_SECONDS: Final = 180.0
STOP_TIMEOUT_SECONDS: Final = 15.0
#: The issue's target.
TARGET_P99_MS: Final = 250.0


@dataclass
class Result:
    """One measurement: an app, a transport, a rate."""

    app: str  # "dispatcher" or "bare"
    transport: str
    rate: int
    sent: int = 0
    acked: int = 0
    retried: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    lost: int | None = None
    duplicated: int | None = None
    seconds: float = 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


# --- the outside world: Slack and Kubernetes, in their own process --------------------------------------


class _World:
    """What runs in the stand-in process: the stand-ins and the commands the benchmark sends them."""

    def __init__(self, slack: Any, kubernetes: Any, kubeconfig: pathlib.Path) -> None:
        self.slack = slack
        self.kubernetes = kubernetes
        self.kubeconfig = kubeconfig
        self.plans: dict[int, dict[str, Any]] = {}

    def info(self) -> dict[str, Any]:
        slack = self.slack
        return {
            "api_url": slack.api_url,
            "bot_token": slack.bot_token,
            "app_token": slack.app_token,
            "signing_secret": slack.signing_secret,
            "kubeconfig": str(self.kubeconfig),
        }

    def plan(self, number: int, count: int, rate: int) -> None:
        """Make the events of one measurement in advance, so that making them costs nothing while pacing."""
        slack = self.slack
        rng = random.Random(number)
        channel = slack.add_channel(f"bench-{number}")
        payloads: list[dict[str, Any]] = []
        threads: dict[str, list[str]] = {}
        started: list[str] = []
        for index in range(count):
            old_enough = started[: max(0, len(started) - round(rate * HUMAN_REPLY_SECONDS))]
            if index % FOLLOW_UP_EVERY == FOLLOW_UP_EVERY - 1 and old_enough:
                thread = rng.choice(old_enough)
                payload = slack.message_event(slack.human, channel, f"follow-up {index}", thread_ts=thread)
                threads[thread].append(payload["event"]["ts"])
            else:
                payload = slack.app_mention(slack.human, channel, f"{slack.mention} task {index}")
                threads[payload["event"]["ts"]] = [payload["event"]["ts"]]
                started.append(payload["event"]["ts"])
            payloads.append(payload)
        self.plans[number] = {"channel": channel, "payloads": payloads, "threads": threads}

    def sockets(self, count: int) -> None:
        """Wait until exactly ``count`` Socket Mode connections are open."""
        self.slack.wait_until(
            lambda: self.slack.socket_connections == count,
            timeout=10.0,
            description=f"{count} Socket Mode connection(s)",
        )

    def send(self, number: int, url: str | None, rate: int) -> list[tuple[float | None, int]]:
        """Send a plan's events at ``rate`` a second (open loop), wait for Slack to be done with all.

        Returns, per event, the first attempt's time to acknowledgement in ms (``None`` if it was not
        acknowledged in time) and how many times it was delivered.
        """
        slack = self.slack
        start = time.monotonic()
        deliveries = []
        for index, payload in enumerate(self.plans[number]["payloads"]):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not synchronisation
            deliveries.append(
                slack.send_socket_event(payload) if url is None else slack.send_event(url, payload)
            )
        deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
        outcome: list[tuple[float | None, int]] = []
        for delivery in deliveries:
            delivery.wait(max(0.1, deadline - time.monotonic()))
            first = delivery.attempts[0]
            acked = first.outcome == "acked" and first.acked_at is not None
            latency = (first.acked_at - first.sent_at) * 1000 if acked else None
            outcome.append((latency, delivery.delivered_count if delivery.acked else -1))
        return outcome

    def check(self, number: int) -> tuple[int, int]:
        """(lost, duplicated): each request shows on its Conversation and gets exactly one status message."""
        slack = self.slack
        plan = self.plans[number]
        lost = duplicated = 0
        for thread, requests in plan["threads"].items():
            name = conversation_name(slack.team_id, plan["channel"], thread)
            conversation = self.kubernetes.get("conversations", NAMESPACE, name)
            if conversation is None or conversation["spec"].get("requestedTs") != requests[-1]:
                lost += 1
            statuses = [
                m
                for m in slack.thread(plan["channel"], thread)
                if m.user == slack.bot_user_id and "Queued" in m.text
            ]
            lost += max(0, len(requests) - len(statuses))
            duplicated += max(0, len(statuses) - len(requests))
        return lost, duplicated


def _serve_world(connection: Connection) -> None:
    """The stand-in process: start both stand-ins, then answer commands until told to stop."""
    from peerbot.testing.kubernetes import KubernetesStandIn
    from peerbot.testing.slack import SlackStandIn

    logging.basicConfig(level=logging.ERROR)
    with (
        tempfile.TemporaryDirectory(prefix="bench-dispatcher-") as files,
        SlackStandIn() as slack,
        KubernetesStandIn(crds=[CRD]) as kubernetes,
    ):
        world = _World(slack, kubernetes, kubernetes.write_kubeconfig(pathlib.Path(files) / "kubeconfig"))
        while True:
            command, args = connection.recv()
            if command == "stop":
                connection.send(("ok", None))
                return
            try:
                connection.send(("ok", getattr(world, command)(*args)))
            except Exception as error:
                connection.send(("error", f"{type(error).__name__}: {error}"))


class World:
    """The benchmark's handle on the stand-in process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve_world, args=(child,), name="bench-standins", daemon=True
        )
        self._process.start()
        child.close()
        self.info: dict[str, Any] = self.call("info")

    def call(self, command: str, *args: Any) -> Any:
        self._connection.send((command, args))
        if not self._connection.poll(COMMAND_TIMEOUT_SECONDS):
            raise TimeoutError(
                f"the stand-in process did not answer {command!r} in {COMMAND_TIMEOUT_SECONDS:g} s"
            )
        status, value = self._connection.recv()
        if status != "ok":
            raise RuntimeError(f"the stand-in process failed on {command!r}: {value}")
        return value

    async def acall(self, command: str, *args: Any) -> Any:
        """:meth:`call` without blocking the event loop the apps under test run on."""
        return await asyncio.to_thread(self.call, command, *args)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError):
            self.call("stop")
        self._process.join(STOP_TIMEOUT_SECONDS)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_TIMEOUT_SECONDS)
        self._connection.close()


# --- the apps under test ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bare_bolt(world: World, socket_mode: bool) -> AsyncIterator[str | None]:
    """A Bolt AsyncApp that only acknowledges, on the same transport and settings as the dispatcher.

    Yields the events URL (HTTP mode) or ``None`` (Socket Mode).
    """
    info = world.info
    client = AsyncWebClient(token=info["bot_token"], base_url=info["api_url"])
    app = AsyncApp(
        client=client,
        signing_secret=None if socket_mode else info["signing_secret"],
        request_verification_enabled=not socket_mode,
        process_before_response=True,
    )

    async def ack_only(ack: Any) -> None:
        await ack()

    app.event("app_mention")(ack_only)
    app.event("message")(ack_only)
    handler: AsyncSocketModeHandler | None = None
    runner: web.AppRunner | None = None
    try:
        if socket_mode:
            handler = AsyncSocketModeHandler(app, app_token=info["app_token"], web_client=client)
            await handler.connect_async()  # type: ignore[no-untyped-call]
            await world.acall("sockets", 1)
            yield None
        else:
            runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            yield f"http://127.0.0.1:{port}/slack/events"
    finally:
        if handler is not None:
            await handler.close_async()  # type: ignore[no-untyped-call]
            await world.acall("sockets", 0)
        if runner is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def dispatcher(world: World, socket_mode: bool) -> AsyncIterator[Any]:
    """The real dispatcher, as ``peerbot dispatcher`` builds it, pointed at the stand-ins."""
    info = world.info
    values: dict[str, Any] = {
        "slack_bot_token": info["bot_token"],
        "slack_api_url": info["api_url"],
        # The per-user rate limit would refuse most of a benchmark's stream from one person.
        "rate_limit_per_minute": 1_000_000,
    }
    values["slack_app_token" if socket_mode else "slack_signing_secret"] = (
        info["app_token"] if socket_mode else info["signing_secret"]
    )
    settings = load_settings(DispatcherSettings, **values)
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=info["kubeconfig"], client_configuration=configuration, persist_config=False
    )
    api = k8s_client.ApiClient(configuration=configuration)
    app = await build_dispatcher(settings, kube_client=api, namespace=NAMESPACE)
    try:
        await app.start("127.0.0.1", 0)
        if socket_mode:
            await world.acall("sockets", 1)
        yield app
    finally:
        await app.stop()
        await api.close()
        if socket_mode:
            await world.acall("sockets", 0)


# --- measuring -------------------------------------------------------------------------------------------


def summarise(result: Result, outcome: Sequence[tuple[float | None, int]]) -> None:
    samples = [latency for latency, _ in outcome if latency is not None]
    result.sent = len(outcome)
    result.acked = sum(1 for _, delivered in outcome if delivered > 0)
    result.retried = sum(1 for _, delivered in outcome if delivered > 1)
    result.p50_ms = round(percentile(samples, 0.50), 2)
    result.p99_ms = round(percentile(samples, 0.99), 2)
    result.max_ms = round(max(samples), 2) if samples else math.nan


async def measure(world: World, number: int, app: str, transport: str, rate: int, duration: float) -> Result:
    socket_mode = transport == "socket_mode"
    count = max(1, round(rate * duration))
    await world.acall("plan", number * 2, WARMUP_EVENTS, rate)
    await world.acall("plan", number * 2 + 1, count, rate)
    result = Result(app=app, transport=transport, rate=rate)
    started = time.monotonic()
    if app == "bare":
        async with bare_bolt(world, socket_mode) as url:
            await world.acall("send", number * 2, url, rate)
            summarise(result, await world.acall("send", number * 2 + 1, url, rate))
    else:
        async with dispatcher(world, socket_mode) as running:
            url = None if socket_mode else running.events_url
            await world.acall("send", number * 2, url, rate)
            await running.dispatcher.drain(SETTLE_TIMEOUT_SECONDS)
            summarise(result, await world.acall("send", number * 2 + 1, url, rate))
            if not await running.dispatcher.drain(SETTLE_TIMEOUT_SECONDS):
                print(
                    f"  warning: follow-up work still running after {SETTLE_TIMEOUT_SECONDS:g} s",
                    file=sys.stderr,
                )
            lost, duplicated = await world.acall("check", number * 2 + 1)
            result.lost = lost + (result.sent - result.acked)
            result.duplicated = duplicated
    result.seconds = round(time.monotonic() - started, 2)
    return result


async def run(duration: float, rates: Sequence[int], transports: Sequence[str]) -> list[Result]:
    results: list[Result] = []
    world = await asyncio.to_thread(World)
    try:
        number = 0
        for transport in transports:
            for rate in rates:
                for app in ("bare", "dispatcher"):
                    number += 1
                    result = await measure(world, number, app, transport, rate, duration)
                    print(
                        f"  {app:<10} {transport:<11} {rate:>4}/s: p50 {result.p50_ms:.1f} ms, "
                        f"p99 {result.p99_ms:.1f} ms ({result.seconds:g} s)",
                        file=sys.stderr,
                    )
                    results.append(result)
    finally:
        await asyncio.to_thread(world.close)
    return results


# --- report ----------------------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    bare = {(r.transport, r.rate): r for r in results if r.app == "bare"}
    header = (
        f"{'transport':<12}{'rate/s':>7}  {'app':<11}{'sent':>6}{'acked':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'×bare p50':>11}{'×bare p99':>11}{'lost':>6}{'dup':>5}{'retried':>9}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        floor = bare.get((result.transport, result.rate))
        ratio50 = ratio99 = ""
        if result.app == "dispatcher" and floor is not None and floor.p50_ms > 0 and floor.p99_ms > 0:
            ratio50 = f"{result.p50_ms / floor.p50_ms:.1f}"
            ratio99 = f"{result.p99_ms / floor.p99_ms:.1f}"
        lines.append(
            f"{result.transport:<12}{result.rate:>7}  {result.app:<11}{result.sent:>6}{result.acked:>7}"
            f"{result.p50_ms:>9.1f}{result.p99_ms:>9.1f}{result.max_ms:>9.1f}{ratio50:>11}{ratio99:>11}"
            f"{'' if result.lost is None else result.lost:>6}"
            f"{'' if result.duplicated is None else result.duplicated:>5}{result.retried:>9}"
        )
    return "\n".join(lines)


def missed(results: Sequence[Result]) -> list[str]:
    """What missed the issue's targets (empty when everything met them)."""
    misses = []
    for result in results:
        if result.app != "dispatcher":
            continue
        where = f"{result.transport} at {result.rate}/s"
        if result.rate >= max(RATES) and not result.p99_ms < TARGET_P99_MS:
            misses.append(f"{where}: p99 {result.p99_ms:.1f} ms is not under {TARGET_P99_MS:g} ms")
        if result.lost:
            misses.append(f"{where}: {result.lost} requests lost")
        if result.duplicated:
            misses.append(f"{where}: {result.duplicated} requests duplicated")
    return misses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_dispatcher", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_DURATION_SECONDS:g} s per point (CI smoke)"
    )
    parser.add_argument(
        "--duration", type=float, help=f"seconds of events per point (default {DURATION_SECONDS:g})"
    )
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES), help="events a second")
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument("--output", type=pathlib.Path, help="the JSON file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_DURATION_SECONDS if args.quick else DURATION_SECONDS)
    if not 0 < duration <= 120 or any(not 1 <= rate <= 1000 for rate in args.rates):
        parser.error("keep --duration within (0, 120] seconds and --rates within 1..1000 events a second")
    # Per-request audit lines would cost more than the work measured; warnings still show.
    configure_logging("WARNING", "console")
    for noisy in ("slack_bolt", "slack_sdk", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    results = asyncio.run(run(duration, args.rates, args.transports))
    print(table(results))
    misses = missed(results)
    for miss in misses:
        print(f"MISSED: {miss}")
    output = args.output or RESULTS / f"dispatcher-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "dispatcher",
        "at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "duration_seconds": duration,
        "targets": {"p99_ms_at_200_per_second": TARGET_P99_MS, "lost": 0, "duplicated": 0},
        "results": [asdict(result) for result in results],
        "missed": misses,
    }
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {output}")
    return 1 if any("lost" in miss or "duplicated" in miss for miss in misses) else 0


if __name__ == "__main__":
    sys.exit(main())
