"""Conversation, Job, repository and branch names: deterministic, valid, never colliding."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerbot import constants
from peerbot.naming import (
    conversation_name,
    is_dns_label,
    job_name,
    label_value,
    thread_branch,
    user_repository_name,
)

slack_ids = st.from_regex(r"\A[TECDGU][A-Z0-9]{8,12}\Z")
thread_timestamps = st.from_regex(r"\A[0-9]{10}\.[0-9]{6}\Z")
any_text = st.text(min_size=0, max_size=80)


def test_readable_name_for_real_slack_ids():
    assert conversation_name("T024BE7LD", "C01ABCDEF", "1700000000.123456") == (
        "t024be7ld-c01abcdef-1700000000-123456"
    )


@given(team=slack_ids, channel=slack_ids, ts=thread_timestamps)
def test_name_is_deterministic_and_a_dns_label(team, channel, ts):
    name = conversation_name(team, channel, ts)
    assert name == conversation_name(team, channel, ts)
    assert is_dns_label(name)
    assert len(name) <= constants.CONVERSATION_NAME_LIMIT
    assert is_dns_label(job_name(name, 999_999_999))


@given(team=any_text, channel=any_text, ts=any_text)
def test_any_input_gives_a_valid_name(team, channel, ts):
    name = conversation_name(team, channel, ts)
    assert is_dns_label(name)
    assert "." not in name
    assert is_dns_label(job_name(name, 1))


@settings(max_examples=500)
@given(
    a=st.tuples(
        st.one_of(slack_ids, any_text), st.one_of(slack_ids, any_text), st.one_of(thread_timestamps, any_text)
    ),
    b=st.tuples(
        st.one_of(slack_ids, any_text), st.one_of(slack_ids, any_text), st.one_of(thread_timestamps, any_text)
    ),
)
def test_different_threads_never_collide(a, b):
    if a != b:
        assert conversation_name(*a) != conversation_name(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("T1", "C1", "1.10"), ("T1", "C1", "1.1")),  # micros are not numbers: 1.10 and 1.1 differ
        (("T1", "C12", "1.1"), ("T1C", "12", "1.1")),  # the separator cannot be moved
        (("t1", "C1", "1.1"), ("T1", "C1", "1.1")),  # lower-case input is not a Slack id: digest form
        (("T1", "C1", "1.1"), ("T1", "C1", "01.1")),
    ],
)
def test_near_misses_do_not_collide(a, b):
    assert conversation_name(*a) != conversation_name(*b)


def test_very_long_ids_fall_back_to_a_digest():
    name = conversation_name("E" + "A" * 39, "C" + "B" * 39, "1700000000.123456")
    assert re.fullmatch(r"c-[0-9a-f]{40}", name)


def test_turns_count_from_one():
    with pytest.raises(ValueError, match="count from 1"):
        job_name("x", 0)


def test_repository_named_from_immutable_user_id():
    assert user_repository_name("U01ABCDEF") == "peerbot-u01abcdef"
    with pytest.raises(ValueError, match="not a Slack user id"):
        user_repository_name("Jane Doe")


def test_branch_per_thread():
    assert thread_branch("C01ABCDEF", "1700000000.123456") == "peerbot/c01abcdef-1700000000-123456"


@given(any_text)
def test_label_values_are_valid(text):
    value = label_value(text)
    assert len(value) <= 63
    assert re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value)
