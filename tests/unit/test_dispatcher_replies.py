"""What the dispatcher says: each message fits Slack, says what to do, and carries the right button."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from peerbot.dispatcher import replies
from peerbot.dispatcher.rules import Refusal
from peerbot.slack_messages import ACTION_STOP, check_message, visible_text

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element for block in message["blocks"] if block["type"] == "actions" for element in block["elements"]
    ]


def all_messages() -> list[dict[str, Any]]:
    conversation = {
        "metadata": {"creationTimestamp": "2026-01-02T11:59:00Z"},
        "status": {"phase": "Running", "startedAt": "2026-01-02T11:58:30Z", "job": "x-t1", "turns": 1},
    }
    return [
        replies.queued_message("t1-c1-1-2"),
        replies.queued_message("t1-c1-1-2", behind_running_turn=True, files=3),
        replies.help_reply(trigger_phrase="@peerbotai", timeout_minutes=5, organization="peerbot-community"),
        replies.rate_limited(42.2, 10),
        replies.maintenance(),
        *(replies.refused(why) for why in Refusal),
        replies.record_failed("the Kubernetes API did not answer in time"),
        replies.record_failed("<script>" * 2000),
        replies.bad_repository("<@U1> & " + "x" * 5000),
        replies.too_long(123_456),
        replies.no_conversation(),
        replies.nothing_to_stop(),
        replies.stopping("U1"),
        replies.continuing("U1"),
        replies.cannot_continue("Running"),
        replies.cannot_continue("Waiting"),
        replies.action_failed("boom"),
        replies.status_reply(conversation, NOW),
    ]


@pytest.mark.parametrize("message", all_messages())
def test_every_message_fits_slack_and_has_fallback_text(message: dict[str, Any]) -> None:
    assert check_message(message) == []
    assert message["text"].strip()


def test_queued_message_has_the_issue_wording_and_a_stop_button_carrying_the_name() -> None:
    message = replies.queued_message("t1-c1-1700000000-000100")
    assert "Queued: starting a worker…" in message["text"]
    [stop] = buttons(message)
    assert stop["action_id"] == ACTION_STOP
    assert stop["value"] == "t1-c1-1700000000-000100"


def test_queued_behind_a_running_turn_and_files_are_mentioned() -> None:
    message = replies.queued_message("c", behind_running_turn=True, files=2)
    assert "current turn" in message["text"]
    assert "2 attached files noted" in visible_text(message)


def test_rate_limit_says_when_to_try_again() -> None:
    message = replies.rate_limited(42.2, 10)
    assert "10 requests" in message["text"]
    assert "try again in 43s" in message["text"]


def test_record_failure_asks_to_try_again_in_a_minute() -> None:
    message = replies.record_failed("the Kubernetes API did not answer in time")
    assert "I could not record your request" in message["text"]
    assert "try again in a minute" in message["text"]


def test_refusals_say_what_to_do() -> None:
    for why in Refusal:
        text = replies.refused(why)["text"]
        assert "I" in text
        assert any(word in text for word in ("Mention", "Ask", "ask"))


def test_help_lists_the_in_thread_commands() -> None:
    text = visible_text(replies.help_reply(trigger_phrase="!bot", timeout_minutes=7, organization="acme"))
    for word in ("`stop`", "`status`", "`help`", "repo=owner/name", "!bot", "7 minutes", "acme"):
        assert word in text


def test_bad_repository_is_escaped_and_clipped() -> None:
    message = replies.bad_repository("<!channel>" + "x" * 500)
    assert "<!channel>" not in message["text"]
    assert "repo=owner/name" in message["text"]


def test_status_shows_phase_job_and_elapsed_time() -> None:
    conversation = {
        "metadata": {"creationTimestamp": "2026-01-02T11:50:00Z"},
        "status": {
            "phase": "Running",
            "job": "t1-c1-1-2-t2",
            "startedAt": (NOW - timedelta(seconds=95)).isoformat(),
            "turns": 2,
            "tokens": {"total": 12_345},
        },
    }
    text = replies.status_reply(conversation, NOW)["text"]
    assert "Running" in text
    assert "t1-c1-1-2-t2" in text
    assert "1m 35s" in text
    assert "2 turns" in text
    assert "12.3k tokens" in text


def test_status_of_a_failed_turn_shows_the_error_and_of_a_new_one_its_age() -> None:
    failed = {
        "status": {
            "phase": "Failed",
            "error": "out of memory",
            "startedAt": "2026-01-02T11:00:00Z",
            "finishedAt": "2026-01-02T11:02:00Z",
        }
    }
    text = replies.status_reply(failed, NOW)["text"]
    assert "out of memory" in text
    assert "2m 00s" in text
    fresh = {"metadata": {"creationTimestamp": "2026-01-02T11:59:50Z"}}
    assert "Pending" in replies.status_reply(fresh, NOW)["text"]
    assert "10s" in replies.status_reply(fresh, NOW)["text"]
