"""Deterministic names: a Slack thread's Conversation, a turn's Job, a user's repository, a thread's branch.

A Conversation name must be a valid DNS-1123 label *and* a label value, so that Jobs and labels can carry
it, and two different threads must never get the same name. Slack ids are upper-case letters and digits
and thread timestamps are ``seconds.micros``, so the readable form ``team-channel-seconds-micros`` in lower
case is one-to-one for every real thread. Anything else (or a name that would be too long) gets a form
built from a SHA-256 digest of the exact input, which cannot be mistaken for a readable one: readable
names have four dash-separated parts, digest names two.
"""

from __future__ import annotations

import hashlib
import re

from peerbot import constants

_SLACK_ID = re.compile(r"^[A-Z0-9]{1,40}$")
_SLACK_TS = re.compile(r"^([0-9]{1,12})\.([0-9]{1,9})$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DIGEST_CHARS = 40


def is_dns_label(name: str) -> bool:
    """True when ``name`` is a valid DNS-1123 label (and so a valid label value and object name)."""
    return len(name) <= constants.KUBERNETES_NAME_LIMIT and bool(_DNS_LABEL.match(name))


def conversation_name(team: str, channel: str, thread_ts: str) -> str:
    """The name of the Conversation for one Slack thread.

    >>> conversation_name("T024BE7LD", "C01ABCDEF", "1700000000.123456")
    't024be7ld-c01abcdef-1700000000-123456'
    """
    ts = _SLACK_TS.match(thread_ts)
    if _SLACK_ID.match(team) and _SLACK_ID.match(channel) and ts:
        readable = f"{team}-{channel}-{ts.group(1)}-{ts.group(2)}".lower()
        if len(readable) <= constants.CONVERSATION_NAME_LIMIT:
            return readable
    # \x00 cannot occur in any part, so the joined text identifies the triple exactly.
    digest = hashlib.sha256("\x00".join((team, channel, thread_ts)).encode()).hexdigest()
    return f"c-{digest[:_DIGEST_CHARS]}"


def job_name(conversation: str, turn: int) -> str:
    """The Job for turn ``turn`` of a Conversation: deterministic, so a restarted operator never makes two.

    >>> job_name("t024be7ld-c01abcdef-1700000000-123456", 3)
    't024be7ld-c01abcdef-1700000000-123456-t3'
    """
    if turn < 1:
        raise ValueError(f"turns count from 1, got {turn}")
    return f"{conversation}-t{turn}"


def label_value(text: str) -> str:
    """A Slack id or similar made safe as a label value (at most 63 characters of ``[A-Za-z0-9._-]``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)[: constants.KUBERNETES_NAME_LIMIT].strip("._-")
    return cleaned


def user_repository_name(user_id: str) -> str:
    """The repository of one Slack user, named from the immutable user id (never the display name)."""
    if not _SLACK_ID.match(user_id):
        raise ValueError(f"not a Slack user id: {user_id!r}")
    return f"peerbot-{user_id.lower()}"


def thread_branch(channel: str, thread_ts: str) -> str:
    """The branch one thread works on."""
    return f"peerbot/{channel.lower()}-{thread_ts.replace('.', '-')}"
