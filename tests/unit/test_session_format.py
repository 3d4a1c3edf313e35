"""The stored session format: keys, messages that round-trip exactly, versions and migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerbot import constants
from peerbot.session import format as fmt
from peerbot.session.format import (
    CompactionSummary,
    Message,
    OtherBlock,
    ResumeState,
    Segment,
    SegmentRef,
    SessionChanges,
    SessionCorruptError,
    SessionHead,
    SessionKey,
    Step,
    TextBlock,
    TokenUsage,
    ToolResultBlock,
    ToolUseBlock,
    UnsupportedSchemaVersionError,
    decode,
    encode,
    orphan_tool_results,
    pending_tool_uses,
)

KEY = SessionKey("T024BE7LD", "C01ABCDEF", "1700000000.123456")
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

# --- Strategies: API-shaped messages --------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=16)
extras = st.dictionaries(
    st.sampled_from(["cache_control", "citations", "future_field"]), json_values, max_size=2
)


def _with_extras(block: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda b, e: {**e, **b}, block, extras)


text_blocks = _with_extras(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}))
tool_use_blocks = _with_extras(
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": ids,
            "name": ids,
            "input": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        }
    )
)
tool_result_blocks = _with_extras(
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": ids},
        optional={
            "content": st.text()
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}), max_size=2),
            "is_error": st.booleans(),
        },
    )
)
thinking_blocks = st.fixed_dictionaries(
    {"type": st.just("thinking"), "thinking": st.text(), "signature": st.text(max_size=30)}
)
other_blocks = st.builds(
    lambda kind, rest: {**rest, "type": kind},
    st.sampled_from(["image", "document", "server_tool_use", "web_search_tool_result"]),
    st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=3),
)
blocks = text_blocks | tool_use_blocks | tool_result_blocks | thinking_blocks | other_blocks
api_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": st.text() | st.lists(blocks, max_size=4)}
)
usages = st.builds(
    TokenUsage,
    input=st.integers(0, 10**9),
    output=st.integers(0, 10**9),
    cache_read=st.integers(0, 10**9),
    cache_write=st.integers(0, 10**9),
)
datetimes = st.datetimes(timezones=st.just(UTC))
steps = st.builds(
    lambda m, u, t: Step(message=Message.model_validate(m), usage=u, created_at=t),
    api_messages,
    usages,
    datetimes,
)


# --- Keys -----------------------------------------------------------------------------------------------


def test_a_key_is_the_thread_not_a_date() -> None:
    assert KEY.path == "T024BE7LD/C01ABCDEF/1700000000.123456"
    assert str(KEY) == KEY.path


@pytest.mark.parametrize(
    ("team", "channel", "thread_ts"),
    [
        ("t1", "C1", "1.1"),
        ("T1", "../C1", "1.1"),
        ("T1", "C1", "2024-01-02"),
        ("T1", "C/1", "1.1"),
        ("", "C1", "1.1"),
    ],
)
def test_a_key_refuses_anything_but_slack_ids(team: str, channel: str, thread_ts: str) -> None:
    with pytest.raises(ValueError, match="Slack's own ids"):
        SessionKey(team, channel, thread_ts)


# --- Messages -------------------------------------------------------------------------------------------


@given(api_messages)
def test_any_api_message_round_trips_exactly(raw: dict[str, Any]) -> None:
    message = Message.model_validate(raw)
    assert message.to_api() == raw
    assert Message.model_validate(json.loads(json.dumps(message.to_api()))).to_api() == raw


def test_blocks_are_typed_for_the_kinds_peerbot_uses() -> None:
    message = Message.model_validate(
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading ", "citations": None},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
            ],
        }
    )
    text, call, image = message.blocks
    assert isinstance(text, TextBlock)
    assert isinstance(call, ToolUseBlock)
    assert isinstance(image, OtherBlock)
    assert message.text == "Reading "
    assert [c.input for c in message.tool_uses()] == [{"path": "a.py"}]
    assert message.to_api()["content"][0] == {"type": "text", "text": "Reading ", "citations": None}


def test_blocks_built_in_python_serialise_without_unset_fields() -> None:
    message = Message(role="user", content=[ToolResultBlock(tool_use_id="toolu_1", content="ok")])
    assert message.to_api() == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
    }
    assert Message(role="user", content="hi").blocks == [TextBlock(text="hi")]


def test_malformed_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="input"):
        Message.model_validate(
            {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "y"}]}
        )
    with pytest.raises(ValueError, match="type"):
        Message.model_validate({"role": "user", "content": [{"text": "no type"}]})
    with pytest.raises(ValueError, match="role"):
        Message.model_validate({"role": "system", "content": "hi"})


def _call(call_id: str) -> Step:
    return Step(message=Message(role="assistant", content=[ToolUseBlock(id=call_id, name="run", input={})]))


def _result(call_id: str) -> Step:
    return Step(message=Message(role="user", content=[ToolResultBlock(tool_use_id=call_id, content="done")]))


def test_pending_tool_calls_and_orphan_results() -> None:
    history = [_call("a"), _result("a"), _call("b")]
    assert [call.id for call in pending_tool_uses(history)] == ["b"]
    assert orphan_tool_results(history) == []
    assert orphan_tool_results(history[1:]) == ["a"]


# --- Token accounting -----------------------------------------------------------------------------------


def test_usage_comes_from_the_api_in_either_form_and_adds_up() -> None:
    api = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": None,
    }
    assert TokenUsage.from_api(api) == TokenUsage(input=10, output=5, cache_read=3, cache_write=0)
    sdk_object = SimpleNamespace(
        input_tokens=1, output_tokens=2, cache_read_input_tokens=0, cache_creation_input_tokens=4
    )
    usage = TokenUsage.from_api(sdk_object) + TokenUsage(input=1)
    assert usage == TokenUsage(input=2, output=2, cache_read=0, cache_write=4)
    assert usage.total == 8
    assert usage.model_dump(by_alias=True) == {"input": 2, "output": 2, "cacheRead": 0, "cacheWrite": 4}


# --- Stored objects -------------------------------------------------------------------------------------


def _head(**fields: Any) -> SessionHead:
    return SessionHead(
        team=KEY.team,
        channel=KEY.channel,
        thread_ts=KEY.thread_ts,
        commit_id="c0ffee",
        created_at=WHEN,
        updated_at=WHEN,
        **fields,
    )


@given(st.lists(steps, max_size=5), st.integers(0, 10**6), st.none() | st.text())
def test_segments_round_trip(step_list: list[Step], first_seq: int, summary: str | None) -> None:
    segment = Segment(
        team=KEY.team,
        channel=KEY.channel,
        thread_ts=KEY.thread_ts,
        first_seq=first_seq,
        summary=CompactionSummary(text=summary, through_seq=first_seq, created_at=WHEN)
        if summary is not None
        else None,
        steps=step_list,
    )
    data = encode(segment)
    back = decode(data, Segment, "segment.json", KEY)
    assert encode(back) == data
    assert back == segment


@given(
    usages,
    st.none()
    | st.builds(
        ResumeState,
        reason=st.sampled_from(["deadline", "cancelled"]),
        paused_at=datetimes,
        turn=st.integers(1, 99),
    ),
    st.lists(st.integers(0, 5), max_size=10),
)
def test_heads_round_trip(tokens: TokenUsage, resume: ResumeState | None, levels: list[int]) -> None:
    refs = [
        SegmentRef(name=f"{i:09d}-{1:09d}-{i:012x}.json", first_seq=i, count=1, level=level, size=100)
        for i, level in enumerate(levels)
    ]
    head = _head(
        tokens=tokens, resume=resume, segments=refs, next_seq=len(refs), repository="a/b", answered_ts="1.2"
    )
    data = encode(head)
    assert decode(data, SessionHead, "head.json", KEY) == head


def test_every_object_carries_schema_version_and_kind_in_camel_case() -> None:
    raw = json.loads(encode(_head(tokens=TokenUsage(cache_read=1))))
    assert raw["schemaVersion"] == constants.SESSION_SCHEMA_VERSION
    assert raw["kind"] == "head"
    assert raw["threadTs"] == KEY.thread_ts
    assert raw["tokens"] == {"input": 0, "output": 0, "cacheRead": 1, "cacheWrite": 0}


def test_a_newer_version_is_refused_with_what_to_do() -> None:
    raw = json.loads(encode(_head()))
    raw["schemaVersion"] = constants.SESSION_SCHEMA_VERSION + 1
    with pytest.raises(UnsupportedSchemaVersionError) as error:
        decode(json.dumps(raw).encode(), SessionHead, "gs://b/sessions/x/head.json")
    message = str(error.value)
    assert "gs://b/sessions/x/head.json" in message
    assert f"version {constants.SESSION_SCHEMA_VERSION + 1}" in message
    assert "run a newer Peerbot" in message


def test_older_versions_are_migrated(monkeypatch: pytest.MonkeyPatch) -> None:
    old = json.loads(encode(_head()))
    old["schemaVersion"] = 0
    del old["answeredTs"]
    old["answered"] = "1700000009.000001"  # pretend version 0 named the field differently

    def from_v0(raw: dict[str, Any]) -> dict[str, Any]:
        raw["answeredTs"] = raw.pop("answered")
        return raw

    monkeypatch.setitem(fmt.MIGRATIONS, 0, from_v0)
    head = decode(json.dumps(old).encode(), SessionHead, "head.json")
    assert head.answered_ts == "1700000009.000001"
    assert head.schema_version == constants.SESSION_SCHEMA_VERSION


def test_a_version_without_migration_is_refused() -> None:
    raw = json.loads(encode(_head()))
    raw["schemaVersion"] = 0
    with pytest.raises(UnsupportedSchemaVersionError, match="no migration"):
        decode(json.dumps(raw).encode(), SessionHead, "head.json")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "head"}', "no schemaVersion"),
        (b'{"schemaVersion": 1, "kind": "head"}', "not a valid session head"),
    ],
)
def test_unreadable_objects_are_reported_as_corrupt(data: bytes, match: str) -> None:
    with pytest.raises(SessionCorruptError, match=match):
        decode(data, SessionHead, "head.json")


def test_unknown_fields_need_a_version_bump() -> None:
    raw = json.loads(encode(_head()))
    raw["addedLater"] = True
    with pytest.raises(SessionCorruptError, match="addedLater"):
        decode(json.dumps(raw).encode(), SessionHead, "head.json")


def test_an_object_of_another_thread_is_refused() -> None:
    other = SessionKey("T024BE7LD", "C01ABCDEF", "1700000000.999999")
    with pytest.raises(SessionCorruptError, match="belongs to thread"):
        decode(encode(_head()), SessionHead, "head.json", other)


def test_changes_apply_only_what_was_set() -> None:
    assert SessionChanges(answered_ts="1.2", resume=None).updates() == {"answered_ts": "1.2", "resume": None}
    assert SessionChanges().updates() == {}
    with pytest.raises(ValueError, match="turns cannot be cleared"):
        SessionChanges(turns=None)


def test_stored_models_are_frozen_because_loads_share_them_with_the_cache() -> None:
    step = Step(message=Message(role="user", content="hi"))
    with pytest.raises(ValueError, match="frozen"):
        step.usage = TokenUsage(input=1)
    with pytest.raises(ValueError, match="frozen"):
        step.message.role = "assistant"
    head = _head()
    with pytest.raises(ValueError, match="frozen"):
        head.turns = 3
