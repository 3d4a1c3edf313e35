"""Timestamps as the API server writes them, and the ages ``kubectl get`` prints."""

from __future__ import annotations

import datetime
import re
from typing import Final

_UTC: Final = datetime.UTC
#: Go writes up to nine fractional digits (nanoseconds); Python parses at most six.
_FRACTION_RE: Final = re.compile(r"\.\d+")


def now() -> datetime.datetime:
    """The current time (UTC)."""
    return datetime.datetime.now(_UTC)


def rfc3339(moment: datetime.datetime) -> str:
    """``metav1.Time``: second precision, ``Z`` suffix (``2024-05-01T10:00:00Z``)."""
    return moment.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(moment: datetime.datetime) -> str:
    """``metav1.MicroTime``: microsecond precision (``2024-05-01T10:00:00.123456Z``)."""
    return moment.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> datetime.datetime | None:
    """Parse an RFC 3339 time (any precision, ``Z`` or an offset); None if it is not one."""
    if not isinstance(text, str) or "T" not in text.upper():
        return None
    text = _FRACTION_RE.sub(lambda match: match[0][:7], text.replace("z", "Z").replace("Z", "+00:00"))
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment


def human_duration(seconds_elapsed: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``: the AGE column (``5s``, ``3m2s``, ``2d``)."""
    seconds = int(seconds_elapsed)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, at: datetime.datetime) -> str:
    """The human-readable age of a timestamp field, ``<unknown>`` when unset or unparsable."""
    moment = parse(timestamp) if timestamp else None
    if moment is None:
        return "<unknown>"
    return human_duration((at - moment).total_seconds())
