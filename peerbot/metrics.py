"""Prometheus metrics shared by every part, and the ``/metrics`` endpoint with its optional bearer token.

Each part keeps its metrics in a registry of its own (no import-time side effects, so tests, benchmarks and
``peerbot demo`` can build as many parts as they like in one process), following the pattern of
:mod:`peerbot.dispatcher.metrics`. Names and labels are documented in ``docs/metrics.md``; every one starts
with ``peerbot_<part>_``:

- :class:`ResilienceMetrics` (every part): ``retries_total{dependency, reason}``,
  ``circuit_breaker_state{dependency}`` (0 closed, 1 half-open, 2 open), ``circuit_breaker_opened_total
  {dependency}``, ``slack_fallbacks_total{reason}`` (messages re-sent as plain text).
- :class:`OperatorMetrics` (``peerbot_operator_``): Conversations by phase, Jobs by outcome, turn duration,
  errors by kind, the maintenance switch; plus what each worker reported in its result document, under
  ``peerbot_worker_`` (a worker is a short-lived Job that Prometheus cannot scrape, so the operator, which
  reads every result, exports it): mention to first progress, tokens, cost, tool calls and their time,
  retries and opened breakers, plain-text fallbacks, errors by kind.

``/metrics`` answers only a request with ``Authorization: Bearer <METRICS_AUTH_TOKEN>`` when that setting
is set (the production-readiness guide's recommendation); probes (``/health``, ``/ready``) stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from peerbot.resilience import BreakerState, StateListener

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Turn durations: a turn lasts seconds to SESSION_TIMEOUT_MINUTES (5 by default, up to an hour or more).
TURN_BUCKETS: Final = (5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 600.0, 1800.0, 3600.0)
#: Mention to first progress: a worker pod usually shows up within seconds; a cold node takes a minute.
FIRST_PROGRESS_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0)
#: Job outcomes counted by ``jobs_total`` (the playbooks' started/succeeded/failed/timed out/cancelled, and
#: paused: a turn that stopped cleanly at the time limit and waits for Continue).
JOB_OUTCOMES: Final = ("started", "succeeded", "paused", "failed", "timed_out", "cancelled")
#: Token kinds as the Messages API reports them.
TOKEN_KINDS: Final = ("input", "output", "cache_read", "cache_write")


class MetricsBase:
    """A registry and what every part's metrics object offers: rendering and reading one value."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)

    def render(self) -> bytes:
        """The text exposition format, for ``/metrics``."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (``0`` when never set): for tests and benchmarks."""
        found = self.registry.get_sample_value(name, labels)
        return found if found is not None else 0.0


class ResilienceMetrics:
    """Retries, circuit breakers and the Slack plain-text fallback, for one part (``prefix``)."""

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.retries = Counter(
            f"{prefix}_retries",
            "Retries of calls to a dependency, by dependency and reason.",
            ["dependency", "reason"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            f"{prefix}_circuit_breaker_state",
            "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            registry=registry,
        )
        self.circuit_opened = Counter(
            f"{prefix}_circuit_breaker_opened",
            "Times a dependency's circuit breaker opened.",
            ["dependency"],
            registry=registry,
        )
        self.slack_fallbacks = Counter(
            f"{prefix}_slack_fallbacks",
            "Messages Slack rejected (invalid_blocks, msg_too_long...) and that were re-sent as plain text.",
            ["reason"],
            registry=registry,
        )

    def retry(self, dependency: str, reason: str = "error") -> None:
        self.retries.labels(dependency=dependency, reason=reason).inc()

    def fallback(self, reason: str) -> None:
        self.slack_fallbacks.labels(reason=reason).inc()

    def breaker_listener(self) -> StateListener:
        """A :class:`~peerbot.resilience.CircuitBreaker` listener that keeps the state gauge current."""

        def changed(dependency: str, old: BreakerState, new: BreakerState) -> None:
            self.circuit_state.labels(dependency=dependency).set(int(new))
            if new is BreakerState.OPEN and old is not BreakerState.OPEN:
                self.circuit_opened.labels(dependency=dependency).inc()

        return changed

    def watch(self, *dependencies: str) -> None:
        """Show these dependencies' breakers as closed (0) before anything happens to them."""
        for dependency in dependencies:
            self.circuit_state.labels(dependency=dependency).set(0)


class _PhaseCollector(Collector):
    """``conversations{phase}``, counted at scrape time from what the operator knows (kopf's index)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Any:
        family = GaugeMetricFamily(self.name, "Conversations by phase.", labels=["phase"])
        from peerbot.conversation import Phase

        counts = dict(self.source())
        for phase in Phase:
            family.add_metric([phase.value], float(counts.get(phase.value, 0)))
        yield family

    def describe(self) -> Any:
        return [GaugeMetricFamily(self.name, "Conversations by phase.", labels=["phase"])]


class OperatorMetrics(MetricsBase):
    """The operator's metrics, and what the workers report through it (see the module docstring)."""

    PREFIX: Final = "peerbot_operator"
    WORKER: Final = "peerbot_worker"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        registry = self.registry
        op, wk = self.PREFIX, self.WORKER
        self.phases = _PhaseCollector(f"{op}_conversations")
        registry.register(self.phases)
        self.jobs = Counter(f"{op}_jobs", "Worker Jobs by outcome.", ["outcome"], registry=registry)
        self.turn_seconds = Histogram(
            f"{op}_turn_duration_seconds",
            "Seconds from a worker Job's creation to its outcome being recorded.",
            ["outcome"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(f"{op}_errors", "Errors by kind.", ["kind"], registry=registry)
        self.maintenance = Gauge(
            f"{op}_maintenance",
            "1 while the maintenance switch is on (no new turns start).",
            registry=registry,
        )
        self.resilience = ResilienceMetrics(op, registry)
        # What the workers report (one observation per finished turn).
        self.first_progress = Histogram(
            f"{wk}_first_progress_seconds",
            "Seconds from the message that asked to the worker's first progress in the thread.",
            buckets=FIRST_PROGRESS_BUCKETS,
            registry=registry,
        )
        self.worker_turn_seconds = Histogram(
            f"{wk}_turn_duration_seconds",
            "Seconds a worker spent on its turn, as it measured them.",
            ["outcome"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.turns = Counter(
            f"{wk}_turns", "Turns by the outcome the worker reported.", ["outcome"], registry=registry
        )
        self.tokens = Counter(
            f"{wk}_tokens",
            "Claude tokens by kind (input, output, cache_read, cache_write).",
            ["kind"],
            registry=registry,
        )
        self.cost = Counter(f"{wk}_cost_usd", "Estimated Anthropic cost in US dollars.", registry=registry)
        self.tool_calls = Counter(f"{wk}_tool_calls", "Tool calls by tool.", ["tool"], registry=registry)
        self.tool_seconds = Counter(
            f"{wk}_tool_seconds",
            "Seconds spent in tool calls, by tool (divide by tool_calls for the mean).",
            ["tool"],
            registry=registry,
        )
        self.tool_max_seconds = Gauge(
            f"{wk}_tool_max_seconds",
            "The longest single call of each tool in the last turn that used it.",
            ["tool"],
            registry=registry,
        )
        self.worker_retries = Counter(
            f"{wk}_retries", "Retries the workers made, by dependency.", ["dependency"], registry=registry
        )
        self.worker_circuit_opened = Counter(
            f"{wk}_circuit_breaker_opened",
            "Turns in which a dependency's breaker opened.",
            ["dependency"],
            registry=registry,
        )
        self.worker_fallbacks = Counter(
            f"{wk}_slack_fallbacks",
            "Worker messages re-sent as plain text after Slack rejected them.",
            registry=registry,
        )
        self.worker_errors = Counter(
            f"{wk}_errors",
            "Failed turns by error kind (slack, github, storage, claude...).",
            ["kind"],
            registry=registry,
        )
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome=outcome)
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind=kind)

    def job(self, outcome: str) -> None:
        self.jobs.labels(outcome=outcome).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()


# --- /metrics -------------------------------------------------------------------------------------------


def authorized(request: web.Request, token: str | None) -> bool:
    """Whether ``request`` may read ``/metrics``: always without a token, else with ``Bearer <token>``."""
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_handler(
    render: Callable[[], bytes], token: str | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``/metrics``: 401 (with ``WWW-Authenticate``) without the right bearer token."""

    async def handle(request: web.Request) -> web.Response:
        if not authorized(request, token):
            return web.Response(
                status=401,
                text="metrics need a bearer token: Authorization: Bearer <METRICS_AUTH_TOKEN>\n",
                headers={"WWW-Authenticate": 'Bearer realm="peerbot-metrics"'},
            )
        response = web.Response(body=render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    return handle


__all__ = [
    "CONTENT_TYPE",
    "JOB_OUTCOMES",
    "TOKEN_KINDS",
    "MetricsBase",
    "OperatorMetrics",
    "ResilienceMetrics",
    "authorized",
    "metrics_handler",
]
