"""The outcome of one turn: what the worker reports and the operator records.

The worker writes it as a small JSON document to ``PEERBOT_RESULT_FILE`` (Kubernetes' termination message
by default, which the operator reads from the pod's status); anything that runs a worker outside a pod
reads the same file. Kubernetes keeps at most 4,096 bytes of a termination message, so the document is
built to fit: the error text is shortened first.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerbot.conversation import SLACK_TS_PATTERN, Tokens

#: Kubernetes truncates termination messages to 4,096 bytes (and 12 KiB across all containers).
TERMINATION_MESSAGE_LIMIT = 4096
RESULT_VERSION = 1


class Outcome(StrEnum):
    """How a turn ended, from the worker's point of view."""

    DONE = "done"  # answered; waiting for the next reply
    PAUSED = "paused"  # stopped shortly before the time limit, checkpointed; Continue resumes it
    FAILED = "failed"  # could not answer; error says why


class ExitCode(IntEnum):
    """The worker's exit status: distinguishes done, paused and failed without reading the result."""

    DONE = 0
    FAILED = 1
    SETTINGS = 2  # a missing or malformed setting: nothing was attempted
    PAUSED = 10


class ErrorKind(StrEnum):
    """What went wrong, in categories a person can act on."""

    SLACK = "slack"
    GITHUB = "github"
    REPOSITORY = "repository"  # the repository does not exist or the token cannot reach it
    STORAGE = "storage"
    CLAUDE = "claude"
    BUDGET = "budget"
    INPUT = "input"
    INTERNAL = "internal"


class TurnError(BaseModel):
    """An error the person is told about: what happened and what to do."""

    model_config = ConfigDict(extra="ignore")

    kind: ErrorKind
    message: str


class ToolUsage(BaseModel):
    """How one tool was used in a turn: calls, seconds in all, and the longest call."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    calls: int = Field(default=0, ge=0)
    seconds: float = Field(default=0.0, ge=0)
    max_seconds: float = Field(default=0.0, ge=0, alias="maxSeconds")


class TurnStats(BaseModel):
    """What only the worker knows about its turn, for the operator's metrics (``docs/metrics.md``)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    #: Seconds from the message that asked (its Slack timestamp) to the worker's first status edit.
    first_progress_seconds: float | None = Field(default=None, ge=0, alias="firstProgressSeconds")
    duration_seconds: float | None = Field(default=None, ge=0, alias="durationSeconds")
    tools: dict[str, ToolUsage] = Field(default_factory=dict)
    #: Retries by dependency (slack, github, gcs, anthropic).
    retries: dict[str, int] = Field(default_factory=dict)
    breakers_opened: list[str] = Field(default_factory=list, alias="breakersOpened")
    slack_fallbacks: int = Field(default=0, ge=0, alias="slackFallbacks")


class TurnResult(BaseModel):
    """The worker's report for one turn."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: int = RESULT_VERSION
    outcome: Outcome
    answered_ts: str | None = Field(default=None, alias="answeredTs", pattern=SLACK_TS_PATTERN)
    tokens: Tokens = Field(default_factory=lambda: Tokens())
    cost_usd: float = Field(default=0.0, alias="costUSD", ge=0)
    pull_request: str | None = Field(default=None, alias="pullRequest")
    branch: str | None = None
    steps: int = Field(default=0, ge=0)
    error: TurnError | None = None
    stats: TurnStats | None = None

    def to_document(self) -> str:
        """The JSON document, at most :data:`TERMINATION_MESSAGE_LIMIT` bytes."""
        document = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(document.encode()) > TERMINATION_MESSAGE_LIMIT and self.stats is not None and self.stats.tools:
            # Statistics are the first thing to give up: the outcome and the error matter more.
            return self.model_copy(
                update={"stats": self.stats.model_copy(update={"tools": {}})}
            ).to_document()
        if len(document.encode()) <= TERMINATION_MESSAGE_LIMIT or self.error is None:
            return document
        overflow = len(document.encode()) - TERMINATION_MESSAGE_LIMIT
        message = self.error.message.encode()[: max(0, len(self.error.message.encode()) - overflow - 16)]
        shortened = self.model_copy(
            update={"error": TurnError(kind=self.error.kind, message=message.decode(errors="ignore") + " …")}
        )
        return shortened.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, document: str | None) -> TurnResult | None:
        """Read a result document; ``None`` when there is none or it is not one of ours."""
        if not document or not document.strip():
            return None
        try:
            return cls.model_validate(json.loads(document))
        except (ValueError, ValidationError):
            return None
