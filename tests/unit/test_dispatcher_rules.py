"""What triggers Peerbot and what it ignores, commands, trigger phrases and repositories: pure rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerbot.dispatcher.rules import (
    BadRepository,
    Candidate,
    Command,
    Ignore,
    Maintenance,
    Policy,
    Record,
    Refusal,
    Refuse,
    RunCommand,
    Trigger,
    addressed_text,
    classify,
    decide,
    has_trigger_phrase,
    parse_command,
    parse_repository,
)

BOT = "UBOT0001"
BOT_ID = "BBOT0001"
TEAM = "T0001"
POLICY = Policy(bot_user_id=BOT, bot_id=BOT_ID)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "message",
        "user": "UALICE01",
        "channel": "C0GENERAL",
        "channel_type": "channel",
        "ts": "1700000000.000100",
        "text": "hello",
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def mention(text: str = "fix the tests", **fields: Any) -> dict[str, Any]:
    return event(type="app_mention", text=f"<@{BOT}> {text}", channel_type=None, **fields)


def candidate(raw: dict[str, Any], policy: Policy = POLICY) -> Candidate:
    result = classify(raw, team=TEAM, policy=policy)
    assert isinstance(result, Candidate), result
    return result


def ignored(raw: dict[str, Any], policy: Policy = POLICY) -> str:
    result = classify(raw, team=TEAM, policy=policy)
    assert isinstance(result, Ignore), result
    return result.reason


# --- what triggers ---------------------------------------------------------------------------------------


def test_app_mention_triggers_with_the_text_after_the_mention() -> None:
    found = candidate(mention("add a health check"))
    assert found.trigger is Trigger.MENTION
    assert found.prompt == "add a health check"
    assert found.message.thread_ts == found.message.ts  # a new thread
    assert not found.message.in_thread


def test_mention_in_a_thread_belongs_to_that_thread() -> None:
    found = candidate(mention(thread_ts="1699999999.000001"))
    assert found.message.thread_ts == "1699999999.000001"
    assert found.message.in_thread


def test_trigger_phrase_typed_as_text_triggers_in_any_case() -> None:
    found = candidate(event(text="Hey @PeerbotAI, please fix CI"))
    assert found.trigger is Trigger.PHRASE
    assert found.prompt == "Hey , please fix CI"


def test_custom_trigger_phrase() -> None:
    policy = Policy(bot_user_id=BOT, trigger_phrase="!bot")
    assert candidate(event(text="!bot do it"), policy).trigger is Trigger.PHRASE
    assert ignored(event(text="@peerbotai do it"), policy) == "not_addressed"


@pytest.mark.parametrize("text", ["@peerbotaix hi", "mail me@peerbotai.com", "peerbotai"])
def test_trigger_phrase_must_stand_alone(text: str) -> None:
    assert not has_trigger_phrase(text, "@peerbotai")


def test_direct_message_triggers_without_a_mention() -> None:
    found = candidate(event(channel="D0ALICE", channel_type="im", text="fix the build"))
    assert found.trigger is Trigger.DIRECT
    assert found.message.is_direct


def test_thread_reply_without_mention_is_a_candidate_follow_up() -> None:
    found = candidate(event(thread_ts="1699999999.000001", text="also update the docs"))
    assert found.trigger is Trigger.THREAD_REPLY
    assert not found.addressed


def test_file_share_is_a_request_with_file_references() -> None:
    files = [{"id": "F01", "name": "log.txt", "mimetype": "text/plain", "size": 12}, {"no": "id"}]
    found = candidate(mention("see the log", subtype=None, files=files))
    assert [ref.id for ref in found.message.files] == ["F01"]
    shared = candidate(event(subtype="file_share", channel_type="im", channel="D01", files=files, text=""))
    assert shared.message.files[0].name == "log.txt"


def test_very_long_message_is_accepted_and_flagged() -> None:
    found = candidate(mention("x" * 40_001))
    assert found.too_long


# --- what is ignored -------------------------------------------------------------------------------------


def test_plain_channel_chatter_is_ignored() -> None:
    assert ignored(event(text="lunch?")) == "not_addressed"


def test_own_messages_are_ignored() -> None:
    assert ignored(event(user=BOT, bot_id=BOT_ID)) == "self"
    assert ignored(event(user=BOT)) == "self"


def test_other_bots_are_ignored() -> None:
    assert ignored(event(subtype="bot_message", user=None, bot_id="BOTHER")) == "bot"
    assert ignored(mention(bot_id="BOTHER")) == "bot"


@pytest.mark.parametrize(
    "subtype", ["channel_join", "channel_topic", "message_replied", "pinned_item", "channel_purpose"]
)
def test_subtypes_that_are_not_new_human_messages_are_ignored(subtype: str) -> None:
    assert ignored(event(subtype=subtype, text=f"<@{BOT}> hi")) == "subtype"


def test_edits_and_deletions_are_ignored_with_their_own_reason() -> None:
    assert ignored(event(subtype="message_changed", hidden=True)) == "edited"
    assert ignored(event(subtype="message_deleted", hidden=True, user=None)) == "deleted"


def test_message_event_for_a_mention_defers_to_the_app_mention_event() -> None:
    assert ignored(event(text=f"<@{BOT}> fix it")) == "covered_by_mention"


def test_mention_in_a_direct_message_is_handled_as_a_direct_message() -> None:
    found = candidate(event(channel="D01", channel_type="im", text=f"<@{BOT}> fix it"))
    assert found.trigger is Trigger.DIRECT
    assert found.prompt == "fix it"


@pytest.mark.parametrize(
    "broken",
    [
        {"user": None},
        {"channel": None},
        {"ts": "yesterday"},
        {"user": "alice"},
        {"thread_ts": "soon"},
        {"text": 42},
    ],
)
def test_malformed_events_are_rejected_not_crashed(broken: dict[str, Any]) -> None:
    raw = mention()
    raw.update(broken)
    raw = {key: value for key, value in raw.items() if value is not None}
    assert ignored(raw) == "malformed"


def test_unknown_event_types_are_ignored() -> None:
    assert ignored({"type": "reaction_added", "user": "U1"}) == "unknown_type"


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.text(max_size=30), st.integers())))
def test_classify_never_raises(raw: dict[str, Any]) -> None:
    classify({"type": "message", **raw}, team=TEAM, policy=POLICY)
    classify({**raw, "type": "app_mention"}, team=None, policy=POLICY)


# --- text helpers ----------------------------------------------------------------------------------------


def test_addressed_text_removes_mentions_with_labels_and_the_phrase() -> None:
    text = f"<@{BOT}|peerbot> @peerbotai  fix <@U999> issue"
    assert addressed_text(text, bot_user_id=BOT, phrase="@peerbotai") == "fix <@U999> issue"


@pytest.mark.parametrize(
    ("prompt", "command"),
    [
        ("stop", Command.STOP),
        ("Stop!", Command.STOP),
        ("cancel.", Command.STOP),
        ("STATUS", Command.STATUS),
        ("status?", Command.STATUS),
        ("help", Command.HELP),
        ("?", Command.HELP),
        ("stop the crash loop", None),
        ("what's the status of the deploy", None),
        ("", None),
    ],
)
def test_commands_are_whole_messages(prompt: str, command: Command | None) -> None:
    assert parse_command(prompt) is command


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fix it repo=octo/hello", ("octo/hello", None)),
        ("repo=octo/hello.", ("octo/hello", None)),
        ("repository: octo/hello-world please", ("octo/hello-world", None)),
        ("repo=<https://github.com/octo/hello|github.com/octo/hello>", ("octo/hello", None)),
        ("repo=https://github.com/octo/hello.git", ("octo/hello", None)),
        ("repo=hello", (None, "hello")),
        ("repo=-bad/name", (None, "-bad/name")),
        ("repo=a/b/c", (None, "a/b/c")),
        ("no repository here", (None, None)),
        ("myrepo=octo/hello", (None, None)),
    ],
)
def test_repository_selection(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_repository(text) == expected


def test_candidate_carries_repository_choice() -> None:
    assert candidate(mention("fix it repo=octo/hello")).repository == "octo/hello"
    assert candidate(mention("fix it repo=nope")).bad_repository == "nope"


# --- policy ----------------------------------------------------------------------------------------------


def decide_for(
    raw: dict[str, Any],
    policy: Policy = POLICY,
    *,
    exists: bool = False,
    private: bool = False,
) -> object:
    return decide(
        candidate(raw, policy), policy=policy, thread_has_conversation=exists, channel_is_private=private
    )


def test_new_request_is_recorded_and_a_mention_in_an_existing_thread_is_a_follow_up() -> None:
    assert decide_for(mention()) == Record(follow_up=False)
    assert decide_for(mention(thread_ts="1.2"), exists=True) == Record(follow_up=True)


def test_thread_reply_is_a_follow_up_only_where_a_conversation_exists() -> None:
    reply = event(thread_ts="1699999999.000001", text="also the docs")
    assert decide_for(reply, exists=True) == Record(follow_up=True)
    assert isinstance(decide_for(reply, exists=False), Ignore)
    no_follow_ups = Policy(bot_user_id=BOT, follow_up_without_mention=False)
    assert decide_for(reply, no_follow_ups, exists=True) == Ignore(
        "follow_up_needs_mention", "a thread reply without a mention"
    )


def test_mention_alone_gets_help() -> None:
    assert decide_for(mention("")) == RunCommand(Command.HELP)
    assert decide_for(event(text="@peerbotai")) == RunCommand(Command.HELP)


def test_mention_with_only_a_file_is_a_request() -> None:
    assert decide_for(mention("", files=[{"id": "F1"}])) == Record(follow_up=False)


def test_commands_are_run() -> None:
    assert decide_for(mention("stop"), exists=True) == RunCommand(Command.STOP)
    reply = event(thread_ts="1699999999.000001", text="status")
    assert decide_for(reply, exists=True) == RunCommand(Command.STATUS)


def test_direct_messages_can_be_turned_off() -> None:
    dm = event(channel="D01", channel_type="im", text="fix")
    assert decide_for(dm) == Record(follow_up=False)
    assert decide_for(dm, Policy(bot_user_id=BOT, allow_direct_messages=False)) == Refuse(
        Refusal.DIRECT_MESSAGES_OFF
    )


def test_private_channels_are_off_by_default() -> None:
    assert decide_for(mention(), private=True) == Refuse(Refusal.PRIVATE_CHANNEL)
    allowed = Policy(bot_user_id=BOT, allow_private_channels=True)
    assert decide_for(mention(), allowed, private=True) == Record(follow_up=False)


def test_allow_lists() -> None:
    channels = Policy(bot_user_id=BOT, allowed_channels=frozenset({"C0OTHER"}))
    assert decide_for(mention(), channels) == Refuse(Refusal.CHANNEL_NOT_ALLOWED)
    dm = event(channel="D01", channel_type="im", text="fix")
    assert decide_for(dm, channels) == Record(follow_up=False)  # direct messages follow their own switch
    users = Policy(bot_user_id=BOT, allowed_users=frozenset({"UBOB"}))
    assert decide_for(mention(), users) == Refuse(Refusal.USER_NOT_ALLOWED)
    assert decide_for(mention("help"), users) == Refuse(Refusal.USER_NOT_ALLOWED)


def test_maintenance_refuses_requests_but_keeps_commands() -> None:
    policy = Policy(bot_user_id=BOT, maintenance=True)
    assert decide_for(mention(), policy) == Maintenance()
    assert decide_for(mention("stop"), policy, exists=True) == RunCommand(Command.STOP)
    assert decide_for(mention("status"), policy, exists=True) == RunCommand(Command.STATUS)


def test_bad_repository_is_reported_before_recording() -> None:
    assert decide_for(mention("fix repo=nope")) == BadRepository("nope")
