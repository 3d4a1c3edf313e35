"""The pure parts of running Peerbot in production: breakers, retries, metrics, audit, maintenance, stats.

Integration tests of the same features against the stand-ins are in tests/integration/test_operations.py
and tests/integration/test_doctor.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from peerbot.audit import AUDIT_LOGGER, FIELDS
from peerbot.conversation import Conversation
from peerbot.doctor import REQUIRED_BOT_SCOPES, parse_image
from peerbot.logs import SECRET_PATTERNS
from peerbot.metrics import OperatorMetrics, ResilienceMetrics, metrics_handler
from peerbot.operator.telemetry import TurnObserver
from peerbot.planner import (
    MAINTENANCE_CONDITION,
    JobView,
    Notify,
    PatchStatus,
    PlannerSettings,
    PodView,
    StartTurn,
    plan,
)
from peerbot.resilience import (
    Breakers,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    backoff,
    call_with_retries,
)
from peerbot.result import Outcome, ToolUsage, TurnResult, TurnStats
from peerbot.testing.claude import API_KEY_PREFIX
from peerbot.testing.slack.server import BOT_SCOPES, SlackStandIn
from peerbot.worker.stats import TurnStatsCollector
from tests.fixtures import secrets as secret_check
from tests.fixtures.github import GITHUB_OUTSIDER_TOKEN, GITHUB_WRITER_TOKEN

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- circuit breakers -------------------------------------------------------------------------------------


def test_a_circuit_opens_after_repeated_failures_and_closes_after_recovery() -> None:
    clock = Clock()
    metrics = ResilienceMetrics("peerbot_test", registry := OperatorMetrics().registry)
    breakers = Breakers(threshold=3, cooldown=30, clock=clock, listeners=[metrics.breaker_listener()])
    slack = breakers["slack"]

    def state() -> float:
        return registry.get_sample_value("peerbot_test_circuit_breaker_state", {"dependency": "slack"}) or 0.0

    for _ in range(2):
        slack.failure("500 internal_error")
    slack.check()  # two failures: still closed
    slack.failure("500 internal_error")
    assert slack.state is BreakerState.OPEN
    assert state() == 2
    with pytest.raises(CircuitOpen, match="internal_error"):
        slack.check()
    assert "circuit open after 3 failures" in breakers.states()["slack"]

    clock.now = 31  # cooldown over: half-open, the next call is let through
    slack.check()
    assert slack.state is BreakerState.HALF_OPEN
    assert state() == 1
    slack.failure("still down")  # a failure while half-open opens it again at once
    assert slack.state is BreakerState.OPEN

    clock.now = 62
    slack.check()
    slack.success()  # recovery closes it
    assert slack.state is BreakerState.CLOSED
    assert state() == 0
    assert breakers.states() == {"slack": "ok"}
    opened = registry.get_sample_value("peerbot_test_circuit_breaker_opened_total", {"dependency": "slack"})
    assert opened == 2
    assert breakers.opened() == ["slack"]


async def test_retries_back_off_with_jitter_and_stop_when_the_circuit_opens() -> None:
    waits: list[float] = []
    retried: list[str] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("connection reset")

    breaker = CircuitBreaker("github", threshold=3, cooldown=60)
    with pytest.raises(ConnectionError):
        await call_with_retries(
            "github",
            flaky,
            retry_on=lambda error: isinstance(error, ConnectionError),
            attempts=10,
            breaker=breaker,
            first=1.0,
            maximum=8.0,
            sleep=sleep,
            on_retry=lambda dependency, error, wait: retried.append(dependency),
        )
    assert calls == 3
    assert breaker.is_open
    assert retried == ["github", "github"]
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 2.0
    with pytest.raises(CircuitOpen):  # while open, nothing is called at all
        await call_with_retries("github", flaky, retry_on=lambda e: True, attempts=3, breaker=breaker)
    assert calls == 3


async def test_a_success_after_retries_closes_the_breaker() -> None:
    outcomes = [ConnectionError("down"), ConnectionError("down"), "ok"]

    async def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(_seconds: float) -> None:
        return None

    breaker = CircuitBreaker("gcs", threshold=5)
    result = await call_with_retries(
        "gcs", call, retry_on=lambda e: True, attempts=5, breaker=breaker, sleep=sleep
    )
    assert result == "ok"
    assert breaker.failures == 0
    assert breaker.state is BreakerState.CLOSED


def test_backoff_is_capped() -> None:
    assert all(15.0 <= backoff(attempt, first=1.0, maximum=30.0) <= 30.0 for attempt in range(6, 20))


# --- /metrics behind a token ------------------------------------------------------------------------------


async def test_metrics_need_the_bearer_token_when_one_is_set() -> None:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(lambda: b"peerbot_up 1\n", "s3cr3t-metrics-token"))
    async with TestClient(TestServer(app)) as client:
        refused = await client.get("/metrics")
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        good = await client.get("/metrics", headers={"Authorization": "Bearer s3cr3t-metrics-token"})
        assert good.status == 200
        assert await good.text() == "peerbot_up 1\n"


# --- maintenance in the planner ---------------------------------------------------------------------------


def _conversation(**status: object) -> Conversation:
    return Conversation.model_validate(
        {
            "metadata": {"name": "t1-c1-1700000000-000001", "namespace": "default"},
            "spec": {
                "team": "T1",
                "channel": "C1",
                "threadTs": "1700000000.000001",
                "user": "U1",
                "requestedTs": "1700000000.000001",
            },
            "status": status,
        }
    )


def test_maintenance_holds_new_turns_says_so_once_and_lets_them_start_after() -> None:
    held = plan(_conversation(), [], NOW, PlannerSettings(maintenance=True))
    assert not [a for a in held.actions if isinstance(a, StartTurn)]
    notices = [a for a in held.actions if isinstance(a, Notify)]
    assert len(notices) == 1
    assert "maintenance" in notices[0].text
    patch = next(a for a in held.actions if isinstance(a, PatchStatus)).patch
    assert patch["phase"] == "Queued"
    assert patch["conditions"][0]["type"] == MAINTENANCE_CONDITION

    waiting = _conversation(phase="Queued", conditions=patch["conditions"])
    assert not plan(waiting, [], NOW + timedelta(seconds=15), PlannerSettings(maintenance=True))  # told once

    resumed = plan(waiting, [], NOW + timedelta(minutes=5), PlannerSettings(maintenance=False))
    assert [a for a in resumed.actions if isinstance(a, StartTurn)]
    start_patch = next(a for a in resumed.actions if isinstance(a, PatchStatus)).patch
    assert start_patch["conditions"] == []


# --- what the operator counts and audits ------------------------------------------------------------------


def _finished_job(result: TurnResult) -> JobView:
    pod = PodView(
        name="job-pod",
        phase="Succeeded",
        terminated_reason="Completed",
        exit_code=0,
        termination_message=result.to_document(),
    )
    return JobView(
        name="t1-c1-1700000000-000001-t1",
        turn=1,
        requested_ts="1700000000.000001",
        created_at=NOW - timedelta(seconds=42),
        complete=True,
        finished_at=NOW,
        pods=(pod,),
    )


def test_turn_metrics_move_when_a_turn_starts_and_ends_and_the_audit_log_says_so() -> None:
    metrics = OperatorMetrics()
    observer = TurnObserver(metrics)
    conversation = _conversation()
    with capture_logs() as logs:
        started = plan(conversation, [], NOW, PlannerSettings())
        observer.observe(conversation, [], started, NOW)
    assert metrics.value("peerbot_operator_jobs_total", outcome="started") == 1
    result = TurnResult(
        outcome=Outcome.DONE,
        answeredTs="1700000000.000001",
        tokens={"input": 100, "output": 20, "cacheRead": 300, "cacheWrite": 50},
        costUSD=0.01,
        stats=TurnStats(
            firstProgressSeconds=1.5,
            durationSeconds=40.0,
            tools={"bash": ToolUsage(calls=3, seconds=2.5, maxSeconds=2.0)},
            retries={"anthropic": 2},
            breakersOpened=["github"],
            slackFallbacks=1,
        ),
    )
    running = _conversation(phase="Running", job="t1-c1-1700000000-000001-t1", turns=1)
    jobs = [_finished_job(result)]
    finished = plan(running, jobs, NOW, PlannerSettings())
    with capture_logs() as more:
        observer.observe(running, jobs, finished, NOW)
    value = metrics.value
    assert value("peerbot_operator_jobs_total", outcome="succeeded") == 1
    assert value("peerbot_operator_turn_duration_seconds_count", outcome="succeeded") == 1
    assert value("peerbot_operator_turn_duration_seconds_sum", outcome="succeeded") == 42
    assert value("peerbot_worker_first_progress_seconds_sum") == 1.5
    assert value("peerbot_worker_tokens_total", kind="cache_read") == 300
    assert value("peerbot_worker_cost_usd_total") == pytest.approx(0.01)
    assert value("peerbot_worker_tool_calls_total", tool="bash") == 3
    assert value("peerbot_worker_tool_seconds_total", tool="bash") == 2.5
    assert value("peerbot_worker_retries_total", dependency="anthropic") == 2
    assert value("peerbot_worker_circuit_breaker_opened_total", dependency="github") == 1
    assert value("peerbot_worker_slack_fallbacks_total") == 1
    audit = [line for line in logs + more if line.get("audit")]
    assert [line["outcome"] for line in audit] == ["started", "succeeded"]
    for line in audit:
        assert set(FIELDS) <= set(line)
        assert line["actor"] == "U1"
        assert line["channel"] == "C1"
        assert line["event"] == "outcome"
    assert audit[1]["duration"] == 42
    assert audit[1]["tokens"] == 120


def test_the_audit_logger_has_its_own_name(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from peerbot.audit import audit
    from peerbot.logs import configure_logging

    configure_logging("INFO", "json")
    try:
        audit("request", service="dispatcher", actor="U1", action="request", outcome="created", channel="C1")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        structlog.reset_defaults()
    assert f'"logger": "{AUDIT_LOGGER}"' in line
    assert '"actor": "U1"' in line


def test_failures_the_operator_sees_itself_are_counted_by_kind() -> None:
    metrics = OperatorMetrics()
    running = _conversation(phase="Running", job="t1-c1-1700000000-000001-t1", turns=1)
    job = JobView(
        name="t1-c1-1700000000-000001-t1",
        turn=1,
        requested_ts="1700000000.000001",
        created_at=NOW - timedelta(minutes=5),
        failed_reason="DeadlineExceeded",
        finished_at=NOW,
    )
    TurnObserver(metrics).observe(running, [job], plan(running, [job], NOW, PlannerSettings()), NOW)
    assert metrics.value("peerbot_operator_jobs_total", outcome="timed_out") == 1
    assert metrics.value("peerbot_operator_errors_total", kind="deadline") == 1


def test_conversations_by_phase_are_counted_at_scrape_time() -> None:
    metrics = OperatorMetrics()
    index = {"Running": ["a", "b"], "Waiting": ["c"]}
    metrics.phases.source = lambda: {phase: len(names) for phase, names in index.items()}
    assert metrics.value("peerbot_operator_conversations", phase="Running") == 2
    assert metrics.value("peerbot_operator_conversations", phase="Queued") == 0
    index["Queued"] = ["d"]
    assert metrics.value("peerbot_operator_conversations", phase="Queued") == 1


# --- the worker's statistics ------------------------------------------------------------------------------


def test_worker_stats_fit_the_result_document() -> None:
    stats = TurnStatsCollector()
    stats.first_progress("1700000000.000000", now=1700000002.5)
    stats.first_progress("1700000000.000000", now=1700000009.0)  # only the first counts
    for seconds in (0.5, 1.5):
        stats.tool("bash", seconds)
    stats.tool("something_new", 0.1)
    stats.retry("anthropic")
    stats.fallback("invalid_blocks")
    result = stats.result(duration_seconds=12.0, breakers_opened=["anthropic"])
    assert result.first_progress_seconds == 2.5
    assert result.tools["bash"] == ToolUsage(calls=2, seconds=2.0, maxSeconds=1.5)
    assert "other" in result.tools
    document = TurnResult(outcome=Outcome.DONE, stats=result, error=None).to_document()
    assert TurnResult.parse(document) == TurnResult(outcome=Outcome.DONE, stats=result)


def test_statistics_give_way_when_the_document_is_too_long() -> None:
    tools = {f"tool{i}": ToolUsage(calls=i, seconds=i, maxSeconds=i) for i in range(200)}
    result = TurnResult(outcome=Outcome.DONE, stats=TurnStats(tools=tools, slackFallbacks=2))
    parsed = TurnResult.parse(result.to_document())
    assert parsed is not None
    assert parsed.stats is not None
    assert parsed.stats.tools == {}
    assert parsed.stats.slack_fallbacks == 2


# --- doctor and manifest agree; the stand-ins' tokens look real -------------------------------------------


def test_the_scopes_doctor_and_the_slack_standin_expect_are_the_manifests() -> None:
    manifest = yaml.safe_load((REPO / "slack-app-manifest.yaml").read_text())
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert list(REQUIRED_BOT_SCOPES) == scopes
    assert list(BOT_SCOPES) == scopes


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("ghcr.io/peerbot-ai/peerbot-worker:0.1.0", ("ghcr.io", "peerbot-ai/peerbot-worker", "0.1.0")),
        ("ubuntu", ("registry-1.docker.io", "library/ubuntu", "latest")),
        ("owner/app:1", ("registry-1.docker.io", "owner/app", "1")),
        ("127.0.0.1:5000/w@sha256:" + "a" * 64, ("127.0.0.1:5000", "w", "sha256:" + "a" * 64)),
        ("Not A Reference", None),
        ("ghcr.io/UPPER/case:1", None),
    ],
)
def test_image_references(reference: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_image(reference) == parsed


def test_the_standins_tokens_look_like_real_ones_so_the_secret_check_means_something() -> None:
    slack = SlackStandIn()
    samples = {
        "slack bot token": slack.bot_token,
        "slack app token": slack.app_token,
        "github writer token": GITHUB_WRITER_TOKEN,
        "github outsider token": GITHUB_OUTSIDER_TOKEN,
        "anthropic key": API_KEY_PREFIX + "abcdefghijklmnop",
    }
    for what, token in samples.items():
        assert any(pattern.search(token) for pattern in SECRET_PATTERNS), what


def test_the_secret_check_catches_a_leak_in_a_log_line() -> None:
    import logging

    before = len(secret_check.leaks())
    logging.getLogger("peerbot.test").warning("the token is %s", "xoxb-1234-5678-abcdefabcdef")
    found = secret_check.leaks()[before:]
    secret_check.forget(before)  # planted on purpose: not a failure of the session
    assert found
    assert found[0].source == "log peerbot.test"
    assert re.match(r"xoxb-1234-56", found[0].excerpt)
