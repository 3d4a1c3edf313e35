"""The audit log: who asked Peerbot for what, in which channel, on which repository, with which outcome.

One stream, the structlog logger named :data:`AUDIT_LOGGER` (``peerbot.audit``), written as JSON in the
cluster like every other log line but easy to route on its own (``jsonPayload.logger="peerbot.audit"`` in
Cloud Logging, ``logger == "peerbot.audit"`` anywhere else). Two parts write it:

- the dispatcher, when it records a request (``event="request"``): who, where, which Conversation, which
  repository was asked for, and whether the request was recorded, a follow-up, a cancel, or refused;
- the operator, when a turn ends (``event="outcome"``): the Job, the outcome, how long it took, tokens and
  cost, the pull request, the error kind.

Every line has the same fields (:data:`FIELDS`, ``None`` when unknown). It holds pointers and Slack ids,
never message text, and passes the same secret redaction as every log line.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from peerbot.logs import get_logger

AUDIT_LOGGER: Final = "peerbot.audit"
#: The fields of every audit line, in the order a reader wants them.
FIELDS: Final = (
    "audit",
    "service",
    "actor",
    "action",
    "outcome",
    "team",
    "channel",
    "thread",
    "conversation",
    "repository",
    "message",
    "job",
    "turn",
    "duration",
)

AuditEvent = Literal["request", "outcome"]


def audit(
    event: AuditEvent,
    *,
    service: str,
    actor: str | None,
    action: str,
    outcome: str,
    team: str | None = None,
    channel: str | None = None,
    thread: str | None = None,
    conversation: str | None = None,
    repository: str | None = None,
    message: str | None = None,
    job: str | None = None,
    turn: int | None = None,
    duration: float | None = None,
    **extra: Any,
) -> None:
    """Write one audit line (see the module docstring). ``extra`` adds detail (tokens, cost, error kind)."""
    fields: dict[str, Any] = {
        "audit": True,
        "service": service,
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "team": team,
        "channel": channel,
        "thread": thread,
        "conversation": conversation,
        "repository": repository,
        "message": message,
        "job": job,
        "turn": turn,
        "duration": round(duration, 3) if duration is not None else None,
    }
    get_logger(AUDIT_LOGGER).info(event, **fields, **extra)


__all__ = ["AUDIT_LOGGER", "FIELDS", "audit"]
