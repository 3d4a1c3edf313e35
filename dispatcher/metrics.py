"""The dispatcher's Prometheus metrics, in a registry of their own made by :class:`Metrics` (no import-time
side effects, so tests and benchmarks can build as many dispatchers as they like in one process).

Names (all prefixed ``peerbot_dispatcher_``):

- ``events_total{type, outcome}``: every Slack payload handled, by type (``app_mention``, ``message``,
  ``block_actions``...) and outcome (``recorded``, ``duplicate``, ``ignored_<reason>``, ``refused_<why>``,
  ``rate_limited``, ``maintenance``, ``command_<name>``, ``record_failed``...).
- ``ack_seconds{transport}``: time from receiving a payload to acknowledging it (``http``, ``socket_mode``).
- ``rate_limit_hits_total``: requests refused by the per-user rate limit.
- ``conversation_writes_total{outcome}``: Conversation writes: ``created``, ``updated``, ``unchanged``,
  ``cancel_requested``, ``failed``.
- ``errors_total{kind}``: errors by kind (``kubernetes``, ``kubernetes_timeout``, ``slack``, ``listener``...).
- ``first_reply_seconds``: from the message that asked (its Slack timestamp) to the dispatcher's first reply
  in the thread (the status message, or 👀 when progress updates are off).
- ``maintenance``: 1 while the maintenance switch is on.
- The shared ones of :class:`peerbot.metrics.ResilienceMetrics`: ``retries_total{dependency, reason}``,
  ``circuit_breaker_state{dependency}``, ``circuit_breaker_opened_total{dependency}``,
  ``slack_fallbacks_total{reason}``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from peerbot.metrics import FIRST_PROGRESS_BUCKETS, ResilienceMetrics

PREFIX: Final = "peerbot_dispatcher"
#: Slack's deadline is 3 s and we aim for well under one; buckets resolve the interesting part finely.
ACK_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class Metrics:
    """One dispatcher's metrics and the registry that exposes them on ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.events = Counter(
            f"{PREFIX}_events",
            "Slack payloads handled, by type and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            f"{PREFIX}_ack_seconds",
            "Seconds from receiving a Slack payload to acknowledging it.",
            ["transport"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.rate_limit_hits = Counter(
            f"{PREFIX}_rate_limit_hits",
            "Requests refused by the per-user rate limit.",
            registry=self.registry,
        )
        self.conversations = Counter(
            f"{PREFIX}_conversation_writes",
            "Conversation writes by outcome (created, updated, unchanged, cancel_requested, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Errors by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.first_reply_seconds = Histogram(
            f"{PREFIX}_first_reply_seconds",
            "Seconds from the message that asked to the dispatcher's first reply in the thread.",
            buckets=FIRST_PROGRESS_BUCKETS,
            registry=self.registry,
        )
        self.maintenance = Gauge(
            f"{PREFIX}_maintenance", "1 while the maintenance switch is on.", registry=self.registry
        )
        self.resilience = ResilienceMetrics(PREFIX, self.registry)

    def event(self, event_type: str, outcome: str) -> None:
        self.events.labels(type=event_type or "unknown", outcome=outcome).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        """The text exposition format, for ``/metrics``."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (``0`` when never set): for tests and the benchmark."""
        found = self.registry.get_sample_value(name, labels)
        return found if found is not None else 0.0
