"""The scripted Claude stand-in, driven by the real ``anthropic`` SDK.

Two kinds of tests: the script plays out as the SDK expects (streaming accumulation, tool use, usage,
errors the SDK retries), and every strict point refuses what the real API refuses, with the exception
class the SDK raises for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any, cast

import anthropic
import httpx2
import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock

from peerbot.testing.claude import ReceivedRequest, Reply, ScriptedClaude, Text, ToolUse

MODEL = "claude-sonnet-4-6"
#: A model that still accepts prefill (a final assistant message); 4.6 and later refuse it.
PREFILL_MODEL = "claude-haiku-4-5"
TOOLS: Any = [
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
]
HELLO: Any = [{"role": "user", "content": "Fix the failing test, please."}]
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
def client(claude_standin: ScriptedClaude) -> Iterator[anthropic.Anthropic]:
    with claude_standin.client(max_retries=0) as sdk:
        yield sdk


def ask(client: anthropic.Anthropic, messages: Any = None, **kwargs: Any) -> Message:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "messages": messages or HELLO}
    params.update(kwargs)
    return cast(Message, client.messages.create(**params))


def text_of(message: Message) -> str:
    block = message.content[0]
    assert isinstance(block, TextBlock)
    return block.text


def tool_uses(message: Message) -> list[ToolUseBlock]:
    return [block for block in message.content if isinstance(block, ToolUseBlock)]


def body_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    return cast(dict[str, Any], error.body)


def tool_history(tool_id: str = "toolu_01A") -> list[Any]:
    call = {"type": "tool_use", "id": tool_id, "name": "bash", "input": {"command": "ls"}}
    return [*HELLO, {"role": "assistant", "content": [call]}]


def tool_answer(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def result_for(tool_id: str = "toolu_01A", text: str = "ok") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": text}


# --- The script as the SDK sees it --------------------------------------------------------------------------


async def test_stream_helper_accumulates_text_streamed_in_chunks(claude_standin: ScriptedClaude) -> None:
    answer = "The test failed because the fixture was missing; I added it and everything passes now."
    claude_standin.load([Reply.text(answer)])
    async with (
        claude_standin.async_client(max_retries=0) as sdk,
        sdk.messages.stream(model=MODEL, max_tokens=1024, messages=HELLO) as stream,
    ):
        chunks = [chunk async for chunk in stream.text_stream]
        final = await stream.get_final_message()
    assert len(chunks) > 2
    assert "".join(chunks) == answer
    assert text_of(final) == answer
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0


def test_raw_stream_follows_the_real_event_sequence(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    reply = Reply.bash("pytest -q", text="Running the tests first.")
    claude_standin.load([reply, reply])
    params: Any = {"model": MODEL, "max_tokens": 1024, "messages": HELLO, "tools": TOOLS, "stream": True}
    with client.messages.with_streaming_response.create(**params) as response:
        names = [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]  # the SDK skips pings itself
    events: list[Any] = list(client.messages.create(**params))
    kinds = [event.type for event in events]
    assert kinds == [name for name in names if name != "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2
    deltas = [event.delta for event in events if event.type == "content_block_delta"]
    assert {delta.type for delta in deltas} == {"text_delta", "input_json_delta"}
    json_text = "".join(delta.partial_json for delta in deltas if delta.type == "input_json_delta")
    assert json_text == '{"command": "pytest -q"}'
    assert events[-2].delta.stop_reason == "tool_use"
    assert events[0].message.stop_reason is None


def test_non_streaming_tool_use_message(claude_standin: ScriptedClaude, client: anthropic.Anthropic) -> None:
    claude_standin.load([Reply.bash("pytest -q", text="Running the tests.", id="toolu_01Fixed")])
    message = ask(client, tools=TOOLS)
    assert message.stop_reason == "tool_use"
    assert text_of(message) == "Running the tests."
    (tool,) = tool_uses(message)
    assert (tool.id, tool.name, tool.input) == ("toolu_01Fixed", "bash", {"command": "pytest -q"})
    assert message.id.startswith("msg_")
    assert message.model == MODEL


@pytest.mark.parametrize(
    "reply",
    [
        Reply.view("src/app.py", view_range=(1, 20)),
        Reply.create("notes.md", 'He said "hi"\n\ttabs, unicode é中 and \\ backslashes\n'),
        Reply.str_replace("src/app.py", "return 1", "return 2"),
        Reply.insert("src/app.py", 0, "import os\n"),
    ],
    ids=["view", "create", "str_replace", "insert"],
)
async def test_text_editor_inputs_survive_stream_accumulation(
    claude_standin: ScriptedClaude, reply: Reply
) -> None:
    claude_standin.load([reply])
    async with (
        claude_standin.async_client(max_retries=0) as sdk,
        sdk.messages.stream(model=MODEL, max_tokens=1024, messages=HELLO, tools=TOOLS) as stream,
    ):
        final = await stream.get_final_message()
    (tool,) = tool_uses(final)
    expected = reply.content[0]
    assert isinstance(expected, ToolUse)
    assert tool.name == "str_replace_based_edit_tool"
    assert tool.input == dict(expected.input)


def test_several_blocks_and_every_stop_reason(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    several = Reply.of(
        "Two things to do.",
        ToolUse("bash", {"command": "git status"}),
        ToolUse("str_replace_based_edit_tool", {"command": "view", "path": "README.md"}),
    )
    claude_standin.load(
        [
            several,
            Reply.text("Cut short", stop_reason="max_tokens"),
            Reply.text("Paused", stop_reason="pause_turn"),
        ]
    )
    first = ask(client, tools=TOOLS)
    assert [block.type for block in first.content] == ["text", "tool_use", "tool_use"]
    first_tool, second_tool = tool_uses(first)
    assert first_tool.id != second_tool.id
    assert first.stop_reason == "tool_use"
    assert ask(client).stop_reason == "max_tokens"
    assert ask(client).stop_reason == "pause_turn"


def test_scripted_usage_overrides_the_estimate(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    reply = Reply.text("ok").with_usage(
        input_tokens=10, output_tokens=5, cache_creation_input_tokens=2000, cache_read_input_tokens=300
    )
    claude_standin.load([reply])
    usage = ask(client).usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (2000, 300)


async def test_prompt_cache_is_written_then_read(claude_standin: ScriptedClaude) -> None:
    """A cached prefix costs cache_creation once and is read back on the next turn, streamed or not."""
    system: Any = [{"type": "text", "text": "You are Peerbot. " * 400, "cache_control": EPHEMERAL}]
    claude_standin.load([Reply.text("first"), Reply.text("second")])
    async with claude_standin.async_client(max_retries=0) as sdk:
        first = await sdk.messages.create(model=MODEL, max_tokens=100, system=system, messages=HELLO)
        async with sdk.messages.stream(model=MODEL, max_tokens=100, system=system, messages=HELLO) as stream:
            second = await stream.get_final_message()
    created = first.usage.cache_creation_input_tokens or 0
    assert created > 1024
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == created
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens


def test_a_short_prefix_is_not_cached(claude_standin: ScriptedClaude, client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "Short.", "cache_control": EPHEMERAL}]
    claude_standin.load([Reply.text("a"), Reply.text("b")])
    for _ in range(2):
        usage = ask(client, system=system).usage
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


def test_callable_step_answers_from_the_tool_result(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    seen: list[ReceivedRequest] = []

    def judge(request: ReceivedRequest) -> Reply:
        seen.append(request)
        return Reply.text("All green." if "3 passed" in request.tool_results_text() else "Still red.")

    claude_standin.load([Reply.bash("pytest -q"), judge])
    first = ask(client, tools=TOOLS)
    (tool,) = tool_uses(first)
    history = [
        *HELLO,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        tool_answer(result_for(tool.id, "3 passed in 0.1s")),
    ]
    assert text_of(ask(client, history, tools=TOOLS)) == "All green."
    (request,) = seen
    assert request.tool_results()[tool.id].text == "3 passed in 0.1s"
    assert request.tool_names == ["bash", "str_replace_based_edit_tool"]
    assert request.number == 1
    claude_standin.assert_script_done()


def test_count_tokens_does_not_use_the_script(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("kept")])
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Be brief.")
    assert counted.input_tokens > 0
    assert claude_standin.remaining == 1
    assert text_of(ask(client)) == "kept"


def test_requests_are_recorded_without_the_credential(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("ok")])
    ask(
        client, system=[{"type": "text", "text": "You are Peerbot.", "cache_control": EPHEMERAL}], tools=TOOLS
    )
    (recorded,) = claude_standin.message_requests
    assert (recorded.status, recorded.step) == (200, 0)
    assert recorded.system_text == "You are Peerbot."
    assert recorded.tools == TOOLS
    assert recorded.messages == HELLO
    assert recorded.cache_control_paths() == ["system.0"]
    assert "anthropic-version" in recorded.headers
    assert "authorization" not in recorded.headers
    assert "x-api-key" not in recorded.headers
    assert claude_standin.api_key not in repr(recorded)


def test_wait_for_requests_sees_a_request_from_another_thread(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("from the worker")])
    worker = threading.Thread(target=ask, args=(client,))
    worker.start()
    (recorded,) = claude_standin.wait_for_requests(1, timeout=5)
    worker.join(timeout=5)
    assert recorded.status == 200
    with pytest.raises(TimeoutError, match="got 1 of 2"):
        claude_standin.wait_for_requests(2, timeout=0.05)


async def test_held_reply_waits_for_its_gate(claude_standin: ScriptedClaude) -> None:
    gate = threading.Event()
    claude_standin.load([Reply.text("released").held_until(gate)])
    async with claude_standin.async_client(max_retries=0) as sdk:
        pending = asyncio.create_task(sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO))
        await asyncio.to_thread(claude_standin.wait_for_requests, 1)
        assert not pending.done()
        gate.set()
        assert text_of(await pending) == "released"


# --- Errors the script injects ------------------------------------------------------------------------------


def test_429_carries_retry_after_and_the_real_error_body(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.error(429, retry_after=1)])
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(client)
    error = caught.value
    assert error.response.headers["retry-after"] == "1"
    assert error.type == "rate_limit_error"
    assert body_of(error)["type"] == "error"
    assert body_of(error)["request_id"] == error.request_id
    assert str(error.request_id).startswith("req_")


def test_sdk_retries_a_429_and_gets_the_next_step(claude_standin: ScriptedClaude) -> None:
    claude_standin.load([Reply.error(429, retry_after=0.05), Reply.text("second time lucky")])
    with claude_standin.client(max_retries=2) as sdk:
        assert text_of(ask(sdk)) == "second time lucky"
    first, second = claude_standin.message_requests
    assert (first.status, second.status) == (429, 200)
    assert second.headers["x-stainless-retry-count"] == "1"


@pytest.mark.parametrize(
    ("status", "exception", "kind"),
    [
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
    ],
)
def test_scripted_http_errors(
    claude_standin: ScriptedClaude,
    client: anthropic.Anthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    claude_standin.load([Reply.error(status)])
    with pytest.raises(exception) as caught:
        ask(client)
    assert caught.value.status_code == status
    assert caught.value.type == kind


def test_stream_cut_off_midway_surfaces_as_a_transport_error(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    """No message_stop: the SDK raises httpx2's RemoteProtocolError (not an anthropic.APIError)."""
    claude_standin.load(
        [Reply.text("This answer never finishes: the connection drops.").cut_off(after_events=4)]
    )
    seen: list[str] = []
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream,
    ):
        seen.extend(event.type for event in stream)
    assert seen[:2] == ["message_start", "content_block_start"]
    assert "message_stop" not in seen


def test_error_event_inside_a_stream(claude_standin: ScriptedClaude, client: anthropic.Anthropic) -> None:
    claude_standin.load([Reply.text("Starting fine, then overloaded.").with_stream_error(after_events=3)])
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream,
    ):
        stream.get_final_message()
    assert body_of(caught.value)["error"]["type"] == "overloaded_error"


def test_exhausted_script_fails_fast_without_retries(claude_standin: ScriptedClaude) -> None:
    with (
        claude_standin.client(max_retries=2) as sdk,
        pytest.raises(anthropic.InternalServerError, match="script is exhausted"),
    ):
        ask(sdk)
    assert len(claude_standin.message_requests) == 1  # x-should-retry: false stops the SDK's retries
    assert "exhausted" in claude_standin.script_errors[0]
    with pytest.raises(AssertionError, match="exhausted"):
        claude_standin.assert_script_done()


def test_script_cannot_use_an_undeclared_tool(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.bash("rm -rf /")])
    with pytest.raises(anthropic.InternalServerError, match="declares only"):
        ask(client, tools=[{"name": "search", "input_schema": {"type": "object"}}])
    assert "'bash'" in claude_standin.script_errors[0]


def test_script_tool_input_must_fit_the_tool(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load(
        [Reply.tool_use("str_replace_based_edit_tool", {"command": "undo_edit", "path": "a"})]
    )
    with pytest.raises(anthropic.InternalServerError, match="no command 'undo_edit'"):
        ask(client, tools=TOOLS)


def test_failing_callable_step_is_reported(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    def broken(request: ReceivedRequest) -> Reply:
        raise KeyError("no such file")

    claude_standin.load([broken])
    with pytest.raises(anthropic.InternalServerError, match="KeyError"):
        ask(client)


def test_a_bug_in_the_stand_in_is_a_clear_500(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("token accounting broke")

    monkeypatch.setattr(claude_standin.cache, "account", broken)
    claude_standin.load([Reply.text("never sent")])
    with pytest.raises(
        anthropic.InternalServerError, match=r"stand-in itself failed.*token accounting broke"
    ):
        ask(client)
    assert len(claude_standin.requests) == 1  # not retried


def test_replies_refuse_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="needs at least one ToolUse"):
        Reply.text("no tool", stop_reason="tool_use")
    with pytest.raises(ValueError, match="stops with 'tool_use'"):
        Reply.of(Text("x"), ToolUse("bash", {"command": "ls"}), stop_reason="end_turn")
    with pytest.raises(ValueError, match="No known error type"):
        Reply.error(418)


# --- Strict like the real API -------------------------------------------------------------------------------


def expect_400(client: anthropic.Anthropic, match: str, messages: Any = None, **kwargs: Any) -> None:
    with pytest.raises(anthropic.BadRequestError, match=match) as caught:
        ask(client, messages, **kwargs)
    assert caught.value.type == "invalid_request_error"


def test_missing_api_key_is_401(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError, match="x-api-key header is required"):
        ask(client, extra_headers={"Authorization": anthropic.Omit()})


def test_wrong_api_key_is_401_and_x_api_key_also_works(claude_standin: ScriptedClaude) -> None:
    claude_standin.load([Reply.text("via x-api-key")])
    with (
        anthropic.Anthropic(base_url=claude_standin.url, api_key="sk-ant-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"),
    ):
        ask(wrong)
    with anthropic.Anthropic(base_url=claude_standin.url, api_key="unused", max_retries=0) as sdk:
        headers = {"x-api-key": claude_standin.api_key, "Authorization": anthropic.Omit()}
        assert text_of(ask(sdk, extra_headers=headers)) == "via x-api-key"


def test_anthropic_version_header_is_required(client: anthropic.Anthropic) -> None:
    expect_400(
        client, "anthropic-version: header is required", extra_headers={"anthropic-version": anthropic.Omit()}
    )


@pytest.mark.parametrize("field", ["max_tokens", "model", "messages"])
def test_required_fields(client: anthropic.Anthropic, field: str) -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO}
    del body[field]
    with pytest.raises(anthropic.BadRequestError, match=f"{field}: Field required"):
        client.post("/v1/messages", body=body, cast_to=Message)


def test_unknown_fields_are_refused(client: anthropic.Anthropic) -> None:
    expect_400(client, "colour: Extra inputs are not permitted", extra_body={"colour": "blue"})


def test_unknown_and_retired_models_are_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError, match="model: claude-sonnet-9"):
        ask(client, model="claude-sonnet-9")
    # The SDK still lists claude-mythos-preview: deprecated, end-of-life on June 30th, 2026.
    with (
        pytest.warns(DeprecationWarning, match="end-of-life"),
        pytest.raises(anthropic.NotFoundError, match="model: claude-mythos-preview"),
    ):
        ask(client, model="claude-mythos-preview")


def test_max_tokens_above_the_model_limit(client: anthropic.Anthropic) -> None:
    expect_400(client, "64000, which is the maximum", model=PREFILL_MODEL, max_tokens=64_001, stream=True)


def test_first_message_must_be_from_the_user(client: anthropic.Anthropic) -> None:
    expect_400(
        client, 'first message must use the "user" role', [{"role": "assistant", "content": "Hi"}, *HELLO]
    )


def test_consecutive_same_role_messages_are_allowed(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    """The real API combines consecutive turns of one role instead of refusing them."""
    claude_standin.load([Reply.text("merged")])
    assert text_of(ask(client, [*HELLO, {"role": "user", "content": "Also the docs."}])) == "merged"


def test_messages_must_use_known_roles(client: anthropic.Anthropic) -> None:
    expect_400(
        client, "messages.0.role: Input should be 'user' or 'assistant'", [{"role": "system", "content": "x"}]
    )


def test_tool_use_needs_a_tool_result_in_the_next_message(client: anthropic.Anthropic) -> None:
    expect_400(
        client,
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_01A",
        [*tool_history(), {"role": "user", "content": "never mind"}],
        tools=TOOLS,
    )


def test_tool_result_must_answer_the_previous_message(client: anthropic.Anthropic) -> None:
    expect_400(
        client,
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01Other",
        [*tool_history(), tool_answer(result_for(), result_for("toolu_01Other"))],
        tools=TOOLS,
    )


def test_tool_results_come_first_in_their_message(client: anthropic.Anthropic) -> None:
    expect_400(
        client,
        r"messages.2: Did not find 1 `tool_result` block\(s\) at the beginning",
        [*tool_history(), tool_answer({"type": "text", "text": "Here:"}, result_for())],
        tools=TOOLS,
    )


def test_tool_blocks_need_tools_defined(client: anthropic.Anthropic) -> None:
    expect_400(client, "must define tools", [*tool_history(), tool_answer(result_for())])


def test_tool_use_ids_must_be_unique(client: anthropic.Anthropic) -> None:
    twice = [*tool_history(), tool_answer(result_for()), *tool_history()[1:], tool_answer(result_for())]
    expect_400(client, "`tool_use` ids must be unique", twice, tools=TOOLS)


def test_a_complete_tool_exchange_is_accepted(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("done")])
    answer = tool_answer(result_for(text="a b"), {"type": "text", "text": "go on"})
    assert text_of(ask(client, [*tool_history(), answer], tools=TOOLS)) == "done"


def test_prefill_only_where_the_model_supports_it(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("B)")])
    prefill = [*HELLO, {"role": "assistant", "content": "The best answer is ("}]
    assert text_of(ask(client, prefill, model=PREFILL_MODEL)) == "B)"
    expect_400(client, "does not support assistant message prefill", prefill)
    trailing = [*HELLO, {"role": "assistant", "content": "So "}]
    expect_400(
        client, "final assistant content cannot end with trailing whitespace", trailing, model=PREFILL_MODEL
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "messages.0: all messages must have non-empty content except for the optional final assistant"),
        ([], "messages.0: all messages must have non-empty content"),
        ([{"type": "text", "text": ""}], "text content blocks must be non-empty"),
        ([{"type": "text", "text": "  \n"}], "text content blocks must contain non-whitespace text"),
    ],
)
def test_empty_content_is_refused(client: anthropic.Anthropic, content: Any, match: str) -> None:
    expect_400(client, match, [{"role": "user", "content": content}])


def test_at_most_four_cache_breakpoints(claude_standin: ScriptedClaude, client: anthropic.Anthropic) -> None:
    tools = [{**tool, "cache_control": EPHEMERAL} for tool in TOOLS]
    system = [
        {"type": "text", "text": "one", "cache_control": EPHEMERAL},
        {"type": "text", "text": "two", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    claude_standin.load([Reply.text("four is fine")])
    assert text_of(ask(client, tools=tools, system=system)) == "four is fine"
    fifth = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}]}]
    expect_400(
        client,
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        fifth,
        tools=tools,
        system=system,
    )
    wrong_ttl = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]
    expect_400(client, r"cache_control\.ttl", system=wrong_ttl)


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([{"type": "bash_20250124", "name": "shell"}], "tools.0.bash_20250124.name: Input should be 'bash'"),
        (
            [{"type": "bash_20990101", "name": "bash"}],
            "Input tag 'bash_20990101' found using 'type' does not match",
        ),
        ([{"name": "search"}], "tools.0.custom.input_schema: Field required"),
        (
            [{"name": "bad name", "input_schema": {"type": "object"}}],
            "custom.name: String should match pattern",
        ),
        ([*TOOLS, {"name": "bash", "input_schema": {"type": "object"}}], "Tool names must be unique"),
    ],
)
def test_tool_definitions_are_checked(client: anthropic.Anthropic, tools: Any, match: str) -> None:
    expect_400(client, match, tools=tools)


def test_validation_failures_do_not_use_the_script(
    claude_standin: ScriptedClaude, client: anthropic.Anthropic
) -> None:
    claude_standin.load([Reply.text("still here")])
    expect_400(client, "first message", [{"role": "assistant", "content": "x"}])
    assert claude_standin.remaining == 1
    assert claude_standin.message_requests[0].step is None


def test_oversized_request_is_413() -> None:
    with (
        ScriptedClaude(max_request_bytes=2000) as claude,
        claude.client(max_retries=0) as sdk,
        pytest.raises(anthropic.ContentTooLargeError) as caught,
    ):
        ask(sdk, [{"role": "user", "content": "x" * 5000}])
    assert body_of(caught.value)["error"]["type"] == "request_too_large"


def test_unknown_path_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.models.list()
