"""What the operator reports about the turns it runs: metrics, the audit log's outcomes, and ``/ready``.

:class:`TurnObserver` looks at every plan the reconciler applied. The planner's Kubernetes Events say
exactly what happened (``TurnStarted``, ``TurnAnswered``, ``TimedOut``...), so they are what is counted:
Jobs by outcome, turn duration, and, from the worker's result document, what only the worker knew (time to
first progress, tokens, cost, tool calls, retries, plain-text fallbacks, error kind). Each finished turn
also writes one ``outcome`` line to the audit log (:mod:`peerbot.audit`).

:func:`operator_readiness` is the operator's ``/ready``: the Kubernetes API answers a read of
Conversations, Slack's ``auth.test`` passes (cached while good), and no circuit breaker is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kubernetes_asyncio import client
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import constants
from peerbot.audit import audit
from peerbot.conversation import Conversation
from peerbot.health import HealthServer
from peerbot.logs import get_logger
from peerbot.metrics import OperatorMetrics
from peerbot.planner import JobView, Plan, RecordEvent, StartTurn
from peerbot.resilience import Breakers, Dependency, slack_retry_handlers
from peerbot.result import TurnResult

log = get_logger(__name__)

#: Planner Events and the Job outcome each one means (``jobs_total{outcome}``).
OUTCOME_EVENTS: Final = {
    "TurnAnswered": "succeeded",
    "TurnPaused": "paused",
    "TurnFailed": "failed",
    "OutOfMemory": "failed",
    "PodLost": "failed",
    "WorkerNeverStarted": "failed",
    "JobVanished": "failed",
    "TimedOut": "timed_out",
    "Cancelled": "cancelled",
}
#: Failures the operator saw itself (no worker report), by the ``errors_total{kind}`` they count as.
FAILURE_KINDS: Final = {
    "OutOfMemory": "out_of_memory",
    "PodLost": "pod_lost",
    "WorkerNeverStarted": "worker_never_started",
    "JobVanished": "job_vanished",
    "TimedOut": "deadline",
}
#: /ready re-checks Slack's auth.test at most this often while it is good (probes come every few seconds).
SLACK_AUTH_CHECK_INTERVAL_SECONDS: Final = 60.0
#: A readiness check slower than this counts as failed.
READY_CHECK_TIMEOUT_SECONDS: Final = 2.0


@dataclass
class TurnObserver:
    """Counts and audits the turns of one operator (see the module docstring)."""

    metrics: OperatorMetrics
    service: str = "operator"

    def observe(
        self, conversation: Conversation | None, jobs: list[JobView], plan: Plan, now: datetime
    ) -> None:
        for action in plan.actions:
            if isinstance(action, StartTurn):
                self.metrics.job("started")
                if conversation is not None:
                    self._audit_start(conversation, action)
            elif isinstance(action, RecordEvent) and action.reason in OUTCOME_EVENTS:
                self._finished(conversation, jobs, action, now)

    def _audit_start(self, conversation: Conversation, start: StartTurn) -> None:
        spec = conversation.spec
        audit(
            "outcome",
            service=self.service,
            actor=spec.user,
            action="turn",
            outcome="started",
            team=spec.team,
            channel=spec.channel,
            thread=spec.thread_ts,
            conversation=conversation.name,
            repository=spec.repository,
            message=spec.requested_ts,
            job=start.request.job_name,
            turn=start.request.turn,
        )

    def _finished(
        self, conversation: Conversation | None, jobs: list[JobView], event: RecordEvent, now: datetime
    ) -> None:
        outcome = OUTCOME_EVENTS[event.reason]
        self.metrics.job(outcome)
        if event.reason in FAILURE_KINDS:
            self.metrics.error(FAILURE_KINDS[event.reason])
        latest = max(jobs, key=lambda j: (j.turn, j.attempt)) if jobs else None
        duration: float | None = None
        if latest is not None and latest.created_at is not None and event.reason != "Cancelled":
            duration = max(0.0, ((latest.finished_at or now) - latest.created_at).total_seconds())
            self.metrics.turn_seconds.labels(outcome=outcome).observe(duration)
        result = latest.result() if latest is not None and event.reason != "Cancelled" else None
        if result is not None:
            self._worker_report(result)
        if conversation is None:
            return
        spec = conversation.spec
        extra: dict[str, Any] = {}
        if result is not None:
            extra = {
                "tokens": result.tokens.input + result.tokens.output,
                "cost_usd": result.cost_usd,
                "pull_request": result.pull_request,
                "error_kind": result.error.kind.value if result.error else None,
            }
        audit(
            "outcome",
            service=self.service,
            actor=spec.user,
            action="turn",
            outcome=outcome,
            team=spec.team,
            channel=spec.channel,
            thread=spec.thread_ts,
            conversation=conversation.name,
            repository=spec.repository,
            message=spec.requested_ts,
            job=latest.name if latest else None,
            turn=latest.turn if latest else None,
            duration=duration,
            reason=event.reason,
            **extra,
        )

    def _worker_report(self, result: TurnResult) -> None:
        metrics = self.metrics
        metrics.turns.labels(outcome=result.outcome.value).inc()
        tokens = result.tokens
        for kind, value in (
            ("input", tokens.input),
            ("output", tokens.output),
            ("cache_read", tokens.cache_read),
            ("cache_write", tokens.cache_write),
        ):
            if value:
                metrics.tokens.labels(kind=kind).inc(value)
        if result.cost_usd:
            metrics.cost.inc(result.cost_usd)
        if result.error is not None:
            metrics.worker_errors.labels(kind=result.error.kind.value).inc()
        stats = result.stats
        if stats is None:
            return
        if stats.first_progress_seconds is not None:
            metrics.first_progress.observe(stats.first_progress_seconds)
        if stats.duration_seconds is not None:
            metrics.worker_turn_seconds.labels(outcome=result.outcome.value).observe(stats.duration_seconds)
        for tool, usage in stats.tools.items():
            metrics.tool_calls.labels(tool=tool).inc(usage.calls)
            metrics.tool_seconds.labels(tool=tool).inc(usage.seconds)
            metrics.tool_max_seconds.labels(tool=tool).set(usage.max_seconds)
        for dependency, count in stats.retries.items():
            if count:
                metrics.worker_retries.labels(dependency=dependency).inc(count)
        for dependency in stats.breakers_opened:
            metrics.worker_circuit_opened.labels(dependency=dependency).inc()
        if stats.slack_fallbacks:
            metrics.worker_fallbacks.inc(stats.slack_fallbacks)


@dataclass
class SlackAuthCache:
    """``auth.test``, re-asked at most every :data:`SLACK_AUTH_CHECK_INTERVAL_SECONDS` while it passes."""

    slack: AsyncWebClient
    ok: bool = False
    detail: str = "not checked yet"
    checked_at: float = field(default=float("-inf"))

    async def check(self) -> str:
        if self.ok and time.monotonic() - self.checked_at < SLACK_AUTH_CHECK_INTERVAL_SECONDS:
            return "ok"
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await self.slack.auth_test()
            self.ok, self.detail = True, "ok"
        except SlackApiError as error:
            self.ok = False
            code = error.response.get("error") if error.response is not None else None
            self.detail = f"auth.test failed ({code}): check SLACK_BOT_TOKEN"
        except (TimeoutError, OSError) as error:
            self.ok = False
            self.detail = f"Slack is unreachable ({type(error).__name__})"
        self.checked_at = time.monotonic()
        return self.detail


def operator_readiness(
    api: client.ApiClient, namespace: str, slack: SlackAuthCache, breakers: Breakers
) -> Callable[[], Awaitable[Mapping[str, str]]]:
    """The operator's ``/ready`` checks (see the module docstring)."""
    custom: Any = client.CustomObjectsApi(api)

    async def checks() -> Mapping[str, str]:
        result: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await custom.list_namespaced_custom_object(
                    constants.API_GROUP,
                    constants.API_VERSION,
                    namespace,
                    constants.CONVERSATION_PLURAL,
                    limit=1,
                )
            result["kubernetes"] = "ok"
        except TimeoutError:
            result["kubernetes"] = "the Kubernetes API did not answer in time"
        except client.ApiException as error:
            result["kubernetes"] = (
                f"the Kubernetes API answered {error.status} {error.reason} to a list of Conversations: "
                "check the CRD is installed and the operator's Role"
            )
        except Exception as error:
            result["kubernetes"] = f"the Kubernetes API is unreachable ({type(error).__name__})"
        result["slack"] = await slack.check()
        for dependency, state in breakers.states().items():
            result[f"circuit:{dependency}"] = state
        return result

    return checks


@dataclass
class Observability:
    """The operator's metrics, breakers, turn observer and health server, made once in kopf's startup."""

    metrics_token: str | None = None
    maintenance: bool = False
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    breakers: Breakers = field(default_factory=Breakers)
    server: HealthServer | None = None

    def __post_init__(self) -> None:
        resilience = self.metrics.resilience
        self.breakers.listeners.append(resilience.breaker_listener())
        self.breakers[Dependency.SLACK]  # made now, so /ready shows it from the start
        resilience.watch(Dependency.SLACK)
        self.metrics.maintenance.set(1 if self.maintenance else 0)
        self.observer = TurnObserver(self.metrics)

    def slack_retry_handlers(self) -> list[Any]:
        """Slack's retry handlers for the operator's client, each retry counted."""
        return slack_retry_handlers(lambda reason: self.metrics.resilience.retry(Dependency.SLACK, reason))

    def count_phases(self, index: Mapping[str, Any]) -> None:
        """``conversations{phase}`` from kopf's index of Conversation names by phase."""
        self.metrics.phases.source = lambda: {phase: len(list(names)) for phase, names in index.items()}

    async def start(
        self, api: client.ApiClient, slack: AsyncWebClient, namespace: str, port: int
    ) -> HealthServer:
        """Serve ``/health``, ``/ready`` and ``/metrics`` on ``port``."""
        readiness = operator_readiness(api, namespace, SlackAuthCache(slack), self.breakers)
        self.server = HealthServer(
            "operator",
            readiness=readiness,
            render_metrics=self.metrics.render,
            metrics_token=self.metrics_token,
            maintenance=self.maintenance,
        )
        return await self.server.start(port=port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


__all__ = [
    "FAILURE_KINDS",
    "OUTCOME_EVENTS",
    "Observability",
    "SlackAuthCache",
    "TurnObserver",
    "operator_readiness",
]
