"""The time limit: shortly before the deadline the worker stops, pushes work in progress, saves where it
stopped and says so with a Continue button; the next turn continues the same session and Claude is told.

The worker reads time from a clock the tests move (:class:`~peerbot.worker.timing.ManualClock`), so the
deadline passes exactly where a test wants it, without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from peerbot.result import ExitCode, Outcome
from peerbot.slack_messages import ACTION_CONTINUE
from peerbot.testing.claude import Reply
from peerbot.testing.worker import Thread, WorkerWorld
from peerbot.worker.prompts import PAUSED_NOTE
from peerbot.worker.timing import ManualClock

TIMEOUT = timedelta(minutes=5)
PAUSED = PAUSED_NOTE.split(".")[0]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path) as world:
        world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
        yield world


def branch_of(thread: Thread) -> str:
    return f"peerbot/{thread.channel.lower()}-{thread.ts.replace('.', '-')}"


def assert_paused_in_slack(world: WorkerWorld, thread: Thread) -> None:
    request = world.slack.message(thread.channel, thread.ts)
    assert set(request.reactions) == {"hourglass_flowing_sand"}
    bot = [m for m in world.slack.thread(thread.channel, thread.ts) if m.user == world.slack.bot_user_id]
    paused = [m for m in bot if "time limit" in m.text and m.blocks and m.blocks[-1].get("type") == "actions"]
    assert len(paused) == 1
    button = paused[0].blocks[-1]["elements"][0]
    assert button["action_id"] == ACTION_CONTINUE
    assert button["value"] == thread.conversation
    assert "5-minute" in paused[0].text


async def test_paused_before_a_tool_then_continued(world: WorkerWorld) -> None:
    clock = ManualClock()
    thread = world.new_thread("@peerbot add y to app.py and check it")

    saved_model_steps: list[str] = []

    def five_minutes_later(point: str) -> None:
        # Time runs out right after the second model step is saved, before its tool call runs.
        if point == "model:after-checkpoint":
            saved_model_steps.append(point)
            if len(saved_model_steps) == 2:
                clock.advance(TIMEOUT.total_seconds())

    app = world.root / "workspaces" / "turn-1" / "repo" / "app.py"
    world.claude.load(
        [
            Reply.create(str(app), "x = 1\ny = 2\n"),
            Reply.bash(f"{sys.executable} -c 'import app; print(app.y)'"),
        ]
    )
    first = await world.run_turn(
        thread, clock=clock, fault=five_minutes_later, deadline=clock.now() + TIMEOUT
    )

    assert first.exit_code == ExitCode.PAUSED
    assert first.result is not None
    assert first.result.outcome is Outcome.PAUSED
    assert first.result.answered_ts == thread.ts
    assert_paused_in_slack(world, thread)
    repository = world.user_repository(thread.user)
    assert world.github.read_file(repository, branch_of(thread), "app.py") == b"x = 1\ny = 2\n"
    assert "paused" in world.github.commits(repository, branch_of(thread))[0].message
    session = world.store.load(thread.key)
    assert session is not None
    assert session.resume is not None
    assert session.resume.reason == "deadline"
    assert session.answered_ts is None  # paused is not answered: the session still owes an answer
    last = session.steps[-1].message
    assert last.role == "assistant"
    assert [call.name for call in last.tool_uses()] == ["bash"]

    # The person presses Continue: a new turn, a new pod, a fresh clone of the branch.
    world.claude.load(
        [
            lambda request: Reply.text(
                "y is " + request.tool_results_text().strip().splitlines()[0]
                if PAUSED in request.last_user_text()
                else "I was not told about the pause"
            )
        ]
    )
    second = await world.run_turn(thread, answered_ts=thread.ts, turn=2)
    assert second.result is not None, second.document
    assert second.result.outcome is Outcome.DONE, second.document
    request = world.claude.message_requests[-1]
    results = request.messages[-1]["content"]
    assert results[0]["type"] == "tool_result"
    assert results[0]["content"] == "2"
    rendered = world.slack.render_thread(thread.channel, thread.ts)
    assert "y is 2" in rendered
    session = world.store.load(thread.key)
    assert session is not None
    assert session.resume is None
    assert session.answered_ts == thread.ts
    assert set(world.slack.message(thread.channel, thread.ts).reactions) == {"white_check_mark"}


async def test_the_deadline_stops_a_model_step_in_flight(world: WorkerWorld) -> None:
    clock = ManualClock()
    thread = world.new_thread("@peerbot think hard")
    gate = threading.Event()
    world.claude.load([Reply.text("too late").held_until(gate)])
    turn = asyncio.create_task(world.run_turn(thread, clock=clock, deadline=clock.now() + TIMEOUT))
    try:
        await asyncio.to_thread(world.claude.wait_for_requests, 1, timeout=10)
        clock.advance(TIMEOUT.total_seconds())
        first = await asyncio.wait_for(turn, 10)
    finally:
        gate.set()
    assert first.result is not None
    assert first.result.outcome is Outcome.PAUSED
    assert_paused_in_slack(world, thread)
    session = world.store.load(thread.key)
    assert session is not None
    assert [s.message.role for s in session.steps] == ["user"]

    world.claude.load([Reply.text("Thought about it.")])
    second = await world.run_turn(thread, answered_ts=thread.ts, turn=2)
    assert second.result is not None
    assert second.result.outcome is Outcome.DONE
    assert PAUSED in json.dumps(world.claude.message_requests[-1].messages[-1])


async def test_a_command_running_into_the_deadline_is_stopped_and_reported(world: WorkerWorld) -> None:
    clock = ManualClock()
    thread = world.new_thread("@peerbot run the slow job")
    world.claude.load([Reply.bash("sleep 30")])
    # One real second before the pause: the command is stopped then, not after its own 30-second limit.
    deadline = clock.now() + timedelta(seconds=31)
    run = await world.run_turn(thread, clock=clock, deadline=deadline, settings={"pause_margin_seconds": 30})
    assert run.result is not None
    assert run.result.outcome is Outcome.PAUSED
    assert run.seconds < 10
    session = world.store.load(thread.key)
    assert session is not None
    result = session.steps[-1].message.tool_results()[0]
    assert result.is_error
    assert "time limit" in json.dumps(result.content)
