"""A worker killed at any moment is resumed by the next one with nothing lost.

In-process: the turn is killed (a ``BaseException`` no handler catches, like SIGKILL) at every fault point
of a turn in turn, and at random points of two turns in a row; the next worker starts in a fresh workspace
with the same session store. Out of process: a real ``peerbot worker`` gets SIGKILL or SIGTERM while it
waits for Claude, and the next one finishes the turn. Each time the thread must end answered, with the
person's message in the session exactly once, every tool call answered exactly once, and the fix on the
branch.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peerbot.result import Outcome, TurnResult
from peerbot.session.format import Session
from peerbot.session.gcs import GcsSessionStore
from peerbot.testing.claude import ReceivedRequest, Reply, StepResult
from peerbot.testing.gcs import GcsStandIn
from peerbot.testing.worker import GITHUB_TOKEN, ORGANIZATION, Thread, WorkerWorld

APP = "def value():\n    return 1\n"
FIXED = "def value():\n    return 2\n"
CHECK = "import app\nassert app.value() == 2, 'value() must be 2'\nprint('check passed')\n"
REQUEST = "fix value() so that check.py passes"
ANSWER = "All done: value() returns 2 and check.py passes."
RESTART_MARK = "stopped unexpectedly"
#: The fault points of a full turn of the policy below: 2 at the start, 3 per model step (4), 3 per tool
#: call (3), 4 while delivering.
POINTS_PER_TURN = 2 + 4 * 3 + 3 * 3 + 4


class SimulatedKill(BaseException):
    """Stops the turn where it stands, past every ``except Exception``, like SIGKILL."""


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(str(block.get("text", "")) for block in content if block.get("type") == "text")


def policy(request: ReceivedRequest) -> StepResult:
    """A careful Claude: after a restart it looks again, redoes the fix and re-runs the check."""
    repo = re.search(r"is cloned at (\S+), on the branch", request.system_text)
    assert repo is not None, "the system prompt must say where the repository is"
    app = f"{repo.group(1)}/app.py"
    messages = request.messages
    start = max(
        (i for i, m in enumerate(messages) if m["role"] == "user" and RESTART_MARK in _text(m)), default=0
    )
    done: set[str] = set()
    for message in messages[start:]:
        if message["role"] == "assistant" and isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_use":
                    done.add(str(block["input"].get("command")))
    if "view" not in done:
        return Reply.view(app, text="Reading app.py.")
    if "create" not in done:
        return Reply.create(app, FIXED)
    if not any(command.startswith("python") or "check.py" in command for command in done):
        return Reply.bash(f"{sys.executable} check.py")
    return Reply.text(ANSWER)


def kill_at(k: int) -> tuple[Callable[[str], None], list[str]]:
    seen: list[str] = []

    def fault(point: str) -> None:
        seen.append(point)
        if len(seen) == k + 1:
            raise SimulatedKill(point)

    return fault, seen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path_factory.mktemp("crash")) as world:
        world.seed_repository(world.slack.human, {"app.py": APP, "check.py": CHECK})
        world.claude.load([policy] * 5000)
        yield world


def assert_nothing_lost(
    world: WorkerWorld, thread: Thread, session: Session | None, *, answers: int, killed_process: bool = False
) -> None:
    assert session is not None
    assert session.resume is None
    assert session.answered_ts == thread.ts
    requests = [s for s in session.steps if s.message.role == "user" and REQUEST in s.message.text]
    assert len(requests) == 1, "the person's message must be in the session exactly once"
    uses = [block.id for s in session.steps for block in s.message.tool_uses()]
    results = [block.tool_use_id for s in session.steps for block in s.message.tool_results()]
    assert sorted(uses) == sorted(results)
    assert len(set(uses)) == len(uses)
    errors = world.claude.script_errors
    if killed_process:
        # The stand-in reports the killed worker's dropped connection as its own error; nothing else may be.
        errors = [error for error in errors if "closing transport" not in error]
    assert errors == []
    bot = [m.text for m in world.slack.thread(thread.channel, thread.ts) if m.user == world.slack.bot_user_id]
    assert 1 <= sum(ANSWER in text for text in bot) <= answers
    branch = f"peerbot/{thread.channel.lower()}-{thread.ts.replace('.', '-')}"
    assert world.github.read_file(world.user_repository(thread.user), branch, "app.py") == FIXED.encode()


async def run_until_done(
    world: WorkerWorld, thread: Thread, faults: list[Callable[[str], None] | None]
) -> int:
    """Run turns with these fault hooks (then without) until one finishes; returns how many were killed."""
    killed = 0
    for attempt in range(len(faults) + 1):
        fault = faults[attempt] if attempt < len(faults) else None
        try:
            run = await world.run_turn(thread, fault=fault)
        except SimulatedKill:
            killed += 1
            continue
        assert run.result is not None, run.document
        assert run.result.outcome is Outcome.DONE, run.document
        return killed
    raise AssertionError("no turn finished")


@pytest.mark.parametrize("k", range(POINTS_PER_TURN))
async def test_killed_at_every_point_and_resumed(world: WorkerWorld, k: int) -> None:
    thread = world.new_thread(f"@peerbot {REQUEST}")
    fault, seen = kill_at(k)
    killed = await run_until_done(world, thread, [fault])
    assert killed == 1, f"the turn was not killed at point {k} (it passed only {seen})"
    assert_nothing_lost(
        world, thread, world.store.load(thread.key), answers=2 if seen[-1] == "deliver:posted" else 1
    )


@pytest.mark.parametrize("seed", range(6))
async def test_killed_twice_at_random_points(world: WorkerWorld, seed: int) -> None:
    rng = random.Random(seed)
    thread = world.new_thread(f"@peerbot {REQUEST}")
    first, first_seen = kill_at(rng.randrange(POINTS_PER_TURN))
    second, second_seen = kill_at(rng.randrange(POINTS_PER_TURN))
    await run_until_done(world, thread, [first, second])
    posted = "deliver:posted" in (first_seen[-1:] + second_seen[-1:])
    assert_nothing_lost(world, thread, world.store.load(thread.key), answers=3 if posted else 1)


def start_worker(
    world: WorkerWorld, thread: Thread, workspace: Path, gcs_standin: GcsStandIn, bucket: Any
) -> subprocess.Popen[bytes]:
    """``peerbot worker`` as a pod runs it: settings and pointers in the environment, GCS for sessions."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PEERBOT_", "SLACK_", "GITHUB_", "ANTHROPIC_", "GCS_"))
    }
    env.update(
        {
            "SLACK_BOT_TOKEN": world.slack.bot_token,
            "SLACK_API_URL": world.slack.api_url,
            "ANTHROPIC_API_KEY": world.claude.api_key,
            "ANTHROPIC_BASE_URL": world.claude.url,
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": world.github.api_url,
            "GITHUB_ORGANIZATION": ORGANIZATION,
            "SESSION_STORE": "gcs",
            "GCS_BUCKET_NAME": bucket.name,
            "STORAGE_EMULATOR_HOST": gcs_standin.url,
            "WORKSPACE_DIR": str(workspace),
            "PEERBOT_RESULT_FILE": str(workspace.parent / f"{workspace.name}.json"),
            "PEERBOT_CONVERSATION": thread.conversation,
            "PEERBOT_TEAM": thread.team,
            "PEERBOT_CHANNEL": thread.channel,
            "PEERBOT_THREAD_TS": thread.ts,
            "PEERBOT_USER": thread.user,
            "PEERBOT_REQUESTED_TS": thread.ts,
            "LOG_FORMAT": "json",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "peerbot.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("signal_sent", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_real_worker_process_stopped_by_a_signal_is_resumed(
    tmp_path: Path, gcs_standin: GcsStandIn, gcs_bucket: Any, signal_sent: signal.Signals
) -> None:
    """SIGKILL (node lost) leaves no result; SIGTERM (eviction, Stop) saves and pushes first, and leaves no
    result either: the operator decides. The next worker finishes the turn from the session."""
    with WorkerWorld(tmp_path, store=GcsSessionStore(gcs_bucket)) as world:
        world.seed_repository(world.slack.human, {"app.py": APP, "check.py": CHECK})
        thread = world.new_thread(f"@peerbot {REQUEST}")
        gate = threading.Event()
        # The third model step is held until the test lets go: the worker is stopped while it waits.
        world.claude.load([policy, policy, lambda request: _held(policy(request), gate), *([policy] * 20)])
        first = start_worker(world, thread, tmp_path / "pod-1", gcs_standin, gcs_bucket)
        try:
            world.claude.wait_for_requests(3, timeout=30)
            first.send_signal(signal_sent)
            _, first_err = first.communicate(timeout=30)
        finally:
            gate.set()
            if first.poll() is None:
                first.kill()
                first.wait(10)
        assert first.returncode in (-signal_sent, 128 + signal_sent), first_err.decode()[-2000:]
        assert not (tmp_path / "pod-1.json").exists()
        if signal_sent == signal.SIGTERM:
            # It saved its steps and pushed its work in progress (the fix) before going.
            branch = f"peerbot/{thread.channel.lower()}-{thread.ts.replace('.', '-')}"
            assert (
                world.github.read_file(world.user_repository(thread.user), branch, "app.py") == FIXED.encode()
            )

        second = start_worker(world, thread, tmp_path / "pod-2", gcs_standin, gcs_bucket)
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 0, stderr.decode()[-3000:]
        result = TurnResult.parse((tmp_path / "pod-2.json").read_text())
        assert result is not None
        assert result.outcome is Outcome.DONE
        assert result.answered_ts == thread.ts
        session = GcsSessionStore(gcs_bucket.name, client=gcs_standin.client()).load(thread.key)
        assert_nothing_lost(world, thread, session, answers=1, killed_process=True)
        assert GITHUB_TOKEN not in stderr.decode() + first_err.decode()
        assert json.loads(stderr.decode().strip().splitlines()[-1])["service"] == "peerbot-worker"


def _held(reply: StepResult, gate: threading.Event) -> StepResult:
    return reply.held_until(gate) if isinstance(reply, Reply) else reply


async def test_the_kill_points_cover_a_whole_turn(world: WorkerWorld) -> None:
    """The parametrisation above kills at every point a full turn of the policy passes through."""
    thread = world.new_thread(f"@peerbot {REQUEST}")
    seen: list[str] = []
    run = await world.run_turn(thread, fault=seen.append)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    assert len(seen) == POINTS_PER_TURN, seen
    assert seen[0] == "turn:before-first-step"
    assert seen[-1] == "deliver:saved"
