"""The turn's pointers as the operator's Job gives them (``PEERBOT_*``): Slack ids and timestamps, no text.

See ``operator/jobs.py`` (``_pointer_env``) for the producing side. Values are read once at start by
:func:`load_pointers`; a missing or malformed one stops the worker with a line naming the variable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from peerbot.conversation import REPOSITORY_PATTERN, SLACK_ID_PATTERN, SLACK_TS_PATTERN
from peerbot.settings import PeerbotSettings, load_settings

_TS_HINT = "a Slack timestamp such as 1700000000.123456"


def _hint(text: str) -> Any:
    """The fix for a setting, printed by :func:`peerbot.settings.load_settings` when it is wrong."""
    return {"hint": text}


class TurnPointers(PeerbotSettings):
    """What the operator tells one worker about its turn (environment variables ``PEERBOT_*``)."""

    peerbot_conversation: str = Field(
        min_length=1, json_schema_extra=_hint("set PEERBOT_CONVERSATION to the Conversation's name")
    )
    peerbot_turn: int = Field(default=1, ge=1, json_schema_extra=_hint("set PEERBOT_TURN to 1 or more"))
    peerbot_team: str = Field(
        pattern=SLACK_ID_PATTERN, json_schema_extra=_hint("set PEERBOT_TEAM to the Slack team id (T...)")
    )
    peerbot_channel: str = Field(
        pattern=SLACK_ID_PATTERN, json_schema_extra=_hint("set PEERBOT_CHANNEL to the Slack channel id")
    )
    peerbot_thread_ts: str = Field(
        pattern=SLACK_TS_PATTERN, json_schema_extra=_hint(f"set PEERBOT_THREAD_TS to {_TS_HINT}")
    )
    peerbot_user: str = Field(
        pattern=SLACK_ID_PATTERN,
        json_schema_extra=_hint("set PEERBOT_USER to the Slack user id (U...) who started the thread"),
    )
    peerbot_requested_ts: str = Field(
        pattern=SLACK_TS_PATTERN, json_schema_extra=_hint(f"set PEERBOT_REQUESTED_TS to {_TS_HINT}")
    )
    peerbot_answered_ts: str | None = Field(
        default=None, json_schema_extra=_hint(f"set PEERBOT_ANSWERED_TS to {_TS_HINT}, or leave it empty")
    )
    peerbot_repository: str | None = Field(
        default=None, json_schema_extra=_hint("set PEERBOT_REPOSITORY to owner/name, or leave it empty")
    )
    peerbot_status_message_ts: str | None = Field(
        default=None,
        json_schema_extra=_hint(f"set PEERBOT_STATUS_MESSAGE_TS to {_TS_HINT}, or leave it empty"),
    )
    peerbot_deadline: datetime | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set PEERBOT_DEADLINE to an RFC 3339 time such as 2025-01-01T12:05:00Z, or leave it empty"
        ),
    )

    @field_validator(
        "peerbot_answered_ts",
        "peerbot_repository",
        "peerbot_status_message_ts",
        "peerbot_deadline",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("peerbot_answered_ts", "peerbot_status_message_ts")
    @classmethod
    def _ts_shape(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.match(SLACK_TS_PATTERN, value):
            raise ValueError(f"not {_TS_HINT}")
        return value

    @field_validator("peerbot_repository")
    @classmethod
    def _repository_shape(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.match(REPOSITORY_PATTERN, value):
            raise ValueError("not owner/name")
        return value

    @field_validator("peerbot_deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def deadline(self, now: datetime, timeout_minutes: int) -> datetime:
        """The hard deadline: ``PEERBOT_DEADLINE``, else ``timeout_minutes`` from ``now``."""
        if self.peerbot_deadline is not None:
            return self.peerbot_deadline.astimezone(UTC)
        return now + timedelta(minutes=timeout_minutes)


def load_pointers(**overrides: object) -> TurnPointers:
    """Read the pointers from the environment (``overrides`` first); raises ``SettingsError``."""
    return load_settings(TurnPointers, **overrides)
