"""Structured logging, set up once per process: JSON off a terminal, readable on one, secrets removed.

Every event passes :func:`redact_secrets`, which replaces anything shaped like a Slack, GitHub or
Anthropic credential with ``[REDACTED]`` wherever it appears (messages, bound context, exception text).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

#: Credential shapes we must never log. Kept broad on purpose: a false positive costs a log line's detail.
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"xox[abposre]-[A-Za-z0-9-]+"),  # Slack bot/user/app-config tokens
    re.compile(r"xapp-[A-Za-z0-9-]+"),  # Slack app-level tokens (Socket Mode)
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub classic/OAuth/user/server/refresh tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),  # GitHub fine-grained tokens
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{10,}"),  # Anthropic API keys
    re.compile(r"(?i)(authorization:\s*(?:bearer|token|basic)\s+)[^\s'\"]+"),
    re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"),  # credentials embedded in a URL
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Return ``text`` with every credential-shaped substring replaced by ``[REDACTED]``."""
    for pattern in SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: remove credentials from every value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto", service: str | None = None) -> None:
    """Set up structlog (and the standard library's logging, for kopf and the SDKs) once per process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (JSON unless standard error is a terminal).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        # "logger" on every line: the audit stream (peerbot.audit) is routed by it.
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.insert(0, _add_service(service))
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    # format_exc_info renders tracebacks to text *before* redaction, so secrets in them are removed too.
    tail: list[Any] = [structlog.processors.format_exc_info, redact_secrets]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _add_service(service: str) -> Any:
    def processor(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A structlog logger with ``context`` bound (channel, thread, conversation, job...).

    The logger is a lazy proxy: one made at import time still follows :func:`configure_logging` when that
    runs later (binding eagerly would freeze structlog's default configuration into it).
    """
    return structlog.get_logger(name, **context)
