"""Pure parts of the worker: history for the API, compaction cuts, pricing, the inbox, pointers, errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from peerbot.session.format import CompactionSummary, Message, Step, TokenUsage
from peerbot.settings import SettingsError
from peerbot.worker import history
from peerbot.worker.inbox import compose, is_empty, requested_repository
from peerbot.worker.model import CircuitBreaker, retry_after
from peerbot.worker.pointers import load_pointers
from peerbot.worker.pricing import Accounting, cost_usd, price_of
from peerbot.worker.redaction import Redactor
from peerbot.worker.slack_io import SharedFile, ThreadMessage, plain_text
from peerbot.worker.timing import Deadline, ManualClock
from peerbot.worker.turn import tool_environment


def step(role: str, *blocks: dict[str, Any]) -> Step:
    return Step(message=Message.model_validate({"role": role, "content": list(blocks)}))


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def use(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "bash", "input": {"command": "ls"}}


def result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}


def conversation() -> list[Step]:
    return [
        step("user", text("turn 1")),  # 0
        step("assistant", text("looking"), use("t1"), use("t2")),  # 1
        step("user", result("t1")),  # 2
        step("user", result("t2")),  # 3
        step("assistant", text("answer 1")),  # 4
        step("user", text("turn 2")),  # 5
        step("assistant", use("t3")),  # 6
        step("user", result("t3")),  # 7
    ]


def test_tool_results_stored_one_per_step_are_merged_for_the_api() -> None:
    api = history.api_history(None, conversation(), first_seq=0, turn_start_seq=5)
    roles = [message["role"] for message in api.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert [block["tool_use_id"] for block in api.messages[2]["content"]] == ["t1", "t2"]
    assert api.earlier_turns_end == 3  # the first answer ends the earlier turns


def test_a_summary_leads_the_history_and_merges_with_a_following_user_message() -> None:
    summary = CompactionSummary(text="we fixed the tests", through_seq=5)
    api = history.api_history(summary, conversation()[5:], first_seq=5, turn_start_seq=5)
    assert api.messages[0]["role"] == "user"
    assert api.messages[0]["content"][0]["text"].startswith(history.SUMMARY_HEADER)
    assert api.messages[0]["content"][1] == text("turn 2")


def test_cache_breakpoints_mark_the_end_of_earlier_turns_and_the_last_message_only() -> None:
    api = history.api_history(None, conversation(), first_seq=0, turn_start_seq=5)
    marked = history.with_cache_breakpoints(api)
    paths = [
        (index, block_index)
        for index, message in enumerate(marked)
        for block_index, block in enumerate(message["content"])
        if "cache_control" in block
    ]
    assert paths == [(3, 0), (6, 0)]
    # The stored history is never changed by the breakpoints.
    assert all("cache_control" not in block for message in api.messages for block in message["content"])


def test_open_tool_calls_and_final_answers() -> None:
    steps = conversation()
    assert [call.id for call in history.open_tool_calls(steps[:3])] == ["t2"]
    assert history.open_tool_calls(steps) == []
    assert history.final_answer(steps[:5]) == "answer 1"
    assert history.final_answer(steps) is None


def test_compaction_never_cuts_between_a_tool_call_and_its_result() -> None:
    steps = conversation()
    for keep in range(0, 400, 5):
        cut = history.choose_cut(steps, 10, keep)
        if cut is None:
            continue
        first_kept = steps[cut - 10]
        assert 10 < cut < 10 + len(steps)
        assert first_kept.message.role == "assistant" or not first_kept.message.tool_results()


def test_transcript_clips_long_tool_output() -> None:
    long = step("user", {"type": "tool_result", "tool_use_id": "t1", "content": "x" * 5000})
    rendered = history.transcript(None, [step("assistant", use("t1")), long])
    assert "Claude used bash" in rendered
    assert "characters cut" in rendered
    assert len(rendered) < 1500


def test_prices_by_model_family_and_cache_hit_rate() -> None:
    assert price_of("claude-sonnet-4-5-20250929").input == 3.0
    assert price_of("claude-haiku-4-5").output == 5.0
    assert price_of("some-future-model") == price_of("claude-sonnet-4-5")
    usage = TokenUsage(input=1_000_000, output=1_000_000, cache_read=1_000_000, cache_write=1_000_000)
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx(3 + 15 + 0.3 + 3.75)
    accounting = Accounting()
    assert accounting.cache_hit_rate is None
    accounting.add("claude-sonnet-4-5", TokenUsage(input=100, output=10, cache_read=300))
    accounting.add("claude-haiku-4-5", TokenUsage(input=100, output=10))
    assert accounting.total.input == 200
    assert accounting.cache_hit_rate == pytest.approx(300 / 500)


def message(ts: str, text_: str, **kwargs: Any) -> ThreadMessage:
    return ThreadMessage(ts=ts, user="U1", author="alice", text=text_, **kwargs)


def test_repository_requests_and_empty_mentions() -> None:
    messages = [message("1.1", "use repo=acme/api please"), message("1.2", "no, repo=acme/web.")]
    assert requested_repository(messages) == "acme/web"
    assert requested_repository([message("1.1", "see https://x/repo=a/b")]) is None
    assert is_empty(message("1.1", "@peerbot  "))
    assert not is_empty(message("1.1", "@peerbot fix it"))
    shared = SharedFile("F1", "a.png", "image/png", 10, None, None)
    assert not is_empty(message("1.1", "@peerbot", files=(shared,)))


def test_huge_messages_are_cut_and_kept_in_full(tmp_path: Path) -> None:
    huge = "word " * 10_000
    inbox = compose([message("1.5", huge)], saved_files={}, attachments_dir=tmp_path, notes=["[note]"])
    assert inbox.text.startswith("[note]")
    assert len(inbox.text) < 25_000
    assert inbox.long_texts == {"message-1-5.txt": huge.strip()}
    assert str(tmp_path / "message-1-5.txt") in inbox.text


def test_slack_markup_becomes_plain_text() -> None:
    names = {"U1": "alice", "UBOT": "peerbot"}
    rendered = plain_text("<@UBOT> ask <@U1> about <https://x.io|the docs> &amp; <!here>", names)
    assert rendered == "@peerbot ask @alice about the docs (https://x.io) & @here"


def test_pointers_parse_and_explain_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "PEERBOT_CONVERSATION": "t1-c1-1-1",
        "PEERBOT_TEAM": "T1",
        "PEERBOT_CHANNEL": "C1",
        "PEERBOT_THREAD_TS": "1700000000.000100",
        "PEERBOT_USER": "U1",
        "PEERBOT_REQUESTED_TS": "1700000000.000200",
        "PEERBOT_ANSWERED_TS": "",
        "PEERBOT_REPOSITORY": "",
        "PEERBOT_DEADLINE": "2030-01-01T12:05:00Z",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pointers = load_pointers()
    assert pointers.peerbot_answered_ts is None
    assert pointers.peerbot_repository is None
    assert pointers.deadline(datetime.now(UTC), 5) == datetime(2030, 1, 1, 12, 5, tzinfo=UTC)
    monkeypatch.setenv("PEERBOT_THREAD_TS", "yesterday")
    monkeypatch.delenv("PEERBOT_USER")
    with pytest.raises(SettingsError) as raised:
        load_pointers()
    problems = "\n".join(raised.value.problems)
    assert "PEERBOT_THREAD_TS is not valid" in problems
    assert "PEERBOT_USER is missing" in problems


def test_tools_never_see_secrets() -> None:
    env = tool_environment(
        {
            "PATH": "/bin",
            "GITHUB_TOKEN": "x",
            "SLACK_BOT_TOKEN": "x",
            "ANTHROPIC_API_KEY": "x",
            "MY_PASSWORD": "x",
            "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
        },
        workspace=Path("/workspace"),
    )
    assert env["PATH"] == "/bin"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert not {"GITHUB_TOKEN", "SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY", "MY_PASSWORD"} & set(env)
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env


def test_redactor_knows_exact_secret_values_and_shapes() -> None:
    redact = Redactor(["odd-shaped-secret-value", "short"])
    assert redact("a odd-shaped-secret-value b short") == "a [REDACTED] b short"
    assert "[REDACTED]" in redact("sk-ant-api03-abcdefghijklmnop")


def test_circuit_breaker_opens_after_consecutive_failures_and_half_opens() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0])
    states: list[bool] = []
    for _ in range(2):
        breaker.failure("529 overloaded")
    states.append(breaker.is_open)
    breaker.success()
    for _ in range(3):
        breaker.failure("529 overloaded")
    states.append(breaker.is_open)
    with pytest.raises(Exception, match="overloaded or unreachable"):
        breaker.check()
    now[0] = 11
    states.append(breaker.is_open)
    assert states == [False, True, False]


def test_retry_after_headers() -> None:
    class Response:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    class Error(Exception):
        def __init__(self, headers: dict[str, str]) -> None:
            self.response = Response(headers)

    assert retry_after(Error({"retry-after": "7"})) == 7
    assert retry_after(Error({"retry-after-ms": "1500"})) == 1.5
    assert retry_after(Error({"retry-after": "soon"})) is None
    assert retry_after(Error({"retry-after": "99999"})) is None
    assert retry_after(ValueError()) is None


async def test_deadline_wakes_waiters_when_a_test_clock_jumps() -> None:
    clock = ManualClock()
    deadline = Deadline(clock, clock.now() + timedelta(minutes=5), 30)
    waiter = asyncio.create_task(deadline.wait_reached())
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance((deadline.soft - clock.now()).total_seconds() + 1)
    await asyncio.wait_for(waiter, 2)
    assert deadline.reached
