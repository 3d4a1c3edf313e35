"""Errors a turn can end with, each carrying what to tell the person: what happened and what to do."""

from __future__ import annotations

from peerbot.result import ErrorKind


class TurnFailure(Exception):
    """A turn cannot go on; the message is for the person in the thread, never holds a secret.

    Attributes:
        kind: the category the operator records (:class:`peerbot.result.ErrorKind`).
        what_happened: one sentence a person understands.
        what_to_do: what they (or an administrator) can do about it.
        detail: technical detail shown as code under the message (already redacted), if any.
        transient: an outage that may pass in seconds (worth another attempt before giving up).
    """

    def __init__(
        self,
        kind: ErrorKind,
        what_happened: str,
        what_to_do: str,
        *,
        detail: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(f"{what_happened} {what_to_do}")
        self.kind = kind
        self.what_happened = what_happened
        self.what_to_do = what_to_do
        self.detail = detail
        self.transient = transient


class RepositoryFailure(TurnFailure):
    """The repository does not exist, cannot be reached with the token, or git/GitHub failed."""


class ClaudeFailure(TurnFailure):
    """The Anthropic API refused or could not answer (after retries, or with an error retries cannot fix)."""


class StorageFailure(TurnFailure):
    """The session store could not be read or written."""
