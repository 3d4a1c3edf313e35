"""Sessions: the versioned record of what the agent did in one thread, and where it is stored.

- :mod:`peerbot.session.format`: the stored objects (:class:`SessionHead`, :class:`Segment`), the
  Messages-API history (:class:`Message`, :class:`Step`), :class:`SessionKey`, versions and migrations;
- :mod:`peerbot.session.store`: :class:`SessionStore`, its layout and its generation-guarded writes;
- :mod:`peerbot.session.gcs` / :mod:`peerbot.session.local`: the store on GCS and in a local folder.
"""

from peerbot.session.format import (
    CompactionSummary,
    ContentBlock,
    Message,
    OtherBlock,
    RedactedThinkingBlock,
    ResumeState,
    Session,
    SessionChanges,
    SessionCorruptError,
    SessionError,
    SessionKey,
    Step,
    TextBlock,
    ThinkingBlock,
    TokenUsage,
    ToolResultBlock,
    ToolUseBlock,
    UnsupportedSchemaVersionError,
    orphan_tool_results,
    pending_tool_uses,
)
from peerbot.session.store import AsyncSessionStore, SessionStore, StaleSessionError

__all__ = [
    "AsyncSessionStore",
    "CompactionSummary",
    "ContentBlock",
    "Message",
    "OtherBlock",
    "RedactedThinkingBlock",
    "ResumeState",
    "Session",
    "SessionChanges",
    "SessionCorruptError",
    "SessionError",
    "SessionKey",
    "SessionStore",
    "StaleSessionError",
    "Step",
    "TextBlock",
    "ThinkingBlock",
    "TokenUsage",
    "ToolResultBlock",
    "ToolUseBlock",
    "UnsupportedSchemaVersionError",
    "orphan_tool_results",
    "pending_tool_uses",
]
