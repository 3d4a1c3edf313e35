"""The Conversation resource (``peerbot.ai/v1``): one per Slack thread, as pydantic models.

``spec`` holds pointers to what is wanted (never prompt text); ``status`` what is. The CRD in
``charts/peerbot/crds/conversations.yaml`` is the same schema for the API server; a test keeps the two in
agreement. Field names are the contract of DESIGN.md and must not change.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from peerbot import constants

SLACK_ID_PATTERN = r"^[A-Z0-9]+$"
SLACK_TS_PATTERN = r"^[0-9]+\.[0-9]+$"
REPOSITORY_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$"


class Phase(StrEnum):
    """Where a Conversation stands. ``Waiting`` means: answered, waiting for the next reply."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    WAITING = "Waiting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"


class _Model(BaseModel):
    """camelCase on the wire (as Kubernetes objects are), snake_case in Python."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API wants it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConversationSpec(_Model):
    """What is wanted: pointers to the Slack thread and the repository, never message text."""

    team: str = Field(pattern=SLACK_ID_PATTERN, description="Slack team (workspace) id.")
    channel: str = Field(pattern=SLACK_ID_PATTERN, description="Slack channel id.")
    thread_ts: str = Field(alias="threadTs", pattern=SLACK_TS_PATTERN, description="Thread timestamp.")
    user: str = Field(pattern=SLACK_ID_PATTERN, description="Slack user id of who started the thread.")
    repository: str | None = Field(
        default=None,
        pattern=REPOSITORY_PATTERN,
        description="owner/name; unset means the user's own repository.",
    )
    requested_ts: str = Field(
        alias="requestedTs", pattern=SLACK_TS_PATTERN, description="The newest message to answer."
    )
    status_message_ts: str | None = Field(
        default=None,
        alias="statusMessageTs",
        pattern=SLACK_TS_PATTERN,
        description="The message the worker edits.",
    )
    cancel_requested_at: datetime | None = Field(
        default=None,
        alias="cancelRequestedAt",
        description="When a cancel was asked (RFC 3339); unset otherwise.",
    )


class Tokens(_Model):
    """Token accounting across every turn of the Conversation."""

    input: int = Field(default=0, ge=0)
    output: int = Field(default=0, ge=0)
    cache_read: int = Field(default=0, alias="cacheRead", ge=0)
    cache_write: int = Field(default=0, alias="cacheWrite", ge=0)
    total: int = Field(default=0, ge=0, description="The sum of the four, kept for kubectl's Tokens column.")

    @model_validator(mode="after")
    def _sum(self) -> Tokens:
        self.total = self.input + self.output + self.cache_read + self.cache_write
        return self


class Condition(_Model):
    """A Kubernetes-style condition (type, status, reason, message, lastTransitionTime)."""

    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = Field(default=None, alias="lastTransitionTime")


class ConversationStatus(_Model):
    """What is: phase, the current Job, what has been answered, and what it cost."""

    phase: Phase = Phase.PENDING
    job: str | None = None
    answered_ts: str | None = Field(default=None, alias="answeredTs", pattern=SLACK_TS_PATTERN)
    attempted_ts: str | None = Field(
        default=None,
        alias="attemptedTs",
        pattern=SLACK_TS_PATTERN,
        description="The newest message a turn was started for (a failed turn waits for a newer one).",
    )
    turns: int = Field(default=0, ge=0)
    tokens: Tokens = Field(default_factory=lambda: Tokens())
    cost_usd: float = Field(default=0.0, alias="costUSD", ge=0)
    pull_request: str | None = Field(default=None, alias="pullRequest")
    error: str | None = None
    queue_position: int | None = Field(default=None, alias="queuePosition", ge=1)
    conditions: list[Condition] = Field(default_factory=list)
    cancelled_at: datetime | None = Field(
        default=None,
        alias="cancelledAt",
        description="The cancel request (spec.cancelRequestedAt) last carried out.",
    )
    started_warm: bool | None = Field(default=None, alias="startedWarm")
    created_at: datetime | None = Field(default=None, alias="createdAt")
    started_at: datetime | None = Field(default=None, alias="startedAt")
    finished_at: datetime | None = Field(default=None, alias="finishedAt")
    updated_at: datetime | None = Field(default=None, alias="updatedAt")


class Conversation(_Model):
    """A whole Conversation object as read from (or written to) the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(default=f"{constants.API_GROUP}/{constants.API_VERSION}", alias="apiVersion")
    kind: str = constants.CONVERSATION_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ConversationSpec
    status: ConversationStatus = Field(default_factory=lambda: ConversationStatus())

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))


def is_valid_repository(text: str) -> bool:
    """True when ``text`` is a GitHub ``owner/name``."""
    return re.match(REPOSITORY_PATTERN, text) is not None
