"""Logs: structured, and never carrying a secret."""

import json
import logging

import pytest
import structlog

from peerbot.logs import configure_logging, get_logger, redact

SECRETS = [
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xapp-1-A0123456789-1234567890123-abcdef0123456789",
    "xoxp-123-456-789-abcdef",
    "ghp_" + "A1b2C3d4" * 5,
    "github_pat_" + "11ABCDEFG0123456789_" + "x" * 40,
    "ghs_" + "z" * 36,
    "sk-ant-api03-" + "Q" * 40,
]


@pytest.mark.parametrize("secret", SECRETS)
def test_redact_removes_every_credential_shape(secret):
    text = f"calling with {secret} now"
    assert secret not in redact(text)
    assert "[REDACTED]" in redact(text)


def test_redact_keeps_ordinary_text():
    text = "pushed branch peerbot/c01-1700000000-123456 to peerbot-community/peerbot-u01abc"
    assert redact(text) == text


def test_url_credentials_and_auth_headers_are_removed():
    assert "tok" not in redact("https://x-access-token:tok@github.com/a/b.git").split("@")[0].split(":")[-1]
    assert "abc123" not in redact("Authorization: Bearer abc123")


@pytest.mark.logs_secrets_on_purpose  # the session's secret check (tests/fixtures/secrets.py) skips it
def test_json_logs_are_redacted_everywhere(capsys):
    configure_logging(level="INFO", fmt="json", service="worker")
    try:
        log = get_logger("test", channel="C1", token=SECRETS[0])
        try:
            raise RuntimeError(f"Slack said no to {SECRETS[3]}")
        except RuntimeError:
            log.exception(
                "call failed", url=f"https://api.slack.com?token={SECRETS[1]}", nested={"k": [SECRETS[6]]}
            )
        logging.getLogger("kopf.objects").warning("foreign library logged %s", SECRETS[2])
        out = capsys.readouterr().err
        lines = [json.loads(line) for line in out.strip().splitlines()]
        assert lines[0]["event"] == "call failed"
        assert lines[0]["channel"] == "C1"
        assert lines[0]["service"] == "worker"
        assert "RuntimeError" in lines[0]["exception"]
        for secret in SECRETS:
            assert secret not in out
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
