"""Secrets removed from anything a tool printed before it reaches Slack, the logs or the session.

:func:`peerbot.logs.redact` knows the *shapes* of Slack, GitHub and Anthropic credentials; a
:class:`Redactor` also knows the exact values this worker holds, so a token of an unusual shape (a
GitHub Enterprise token, a stand-in's key) is caught too.
"""

from __future__ import annotations

from collections.abc import Iterable

from peerbot.logs import REDACTED, redact

#: Values shorter than this are not treated as secrets: replacing them would mangle ordinary text.
MIN_SECRET_LENGTH = 8


class Redactor:
    """Replaces every known secret value and every credential-shaped string with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {value for value in secrets if value and len(value) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is replaced whole.
        self._values = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return redact(text)
