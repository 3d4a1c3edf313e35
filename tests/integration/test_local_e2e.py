"""``peerbot local`` end to end: the real command, the real dispatcher and the real worker, no cluster.

``peerbot local`` runs as a process, as a person runs it, against the Slack stand-in (Socket Mode), the
scripted Claude and the GitHub stand-in: a mention becomes a local worker run that answers in the thread,
a reply continues the same session, and Ctrl-C in the middle of a turn pauses it (the worker saves its
steps and pushes its work) so that the next start finishes it with nothing lost. That last one runs
without ``GITHUB_TOKEN``: the repositories stay in local git under the folder, and GitHub is never asked.

Waits are on the stand-ins' own conditions (a Socket Mode connection, a message in the thread); the only
thing with no event to wait for is a file another process writes, which is re-read until it changes,
within a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peerbot.local.jobs import JobRecord, JobState
from peerbot.naming import conversation_name
from peerbot.testing.claude import ReceivedRequest, Reply
from peerbot.testing.worker import GITHUB_TOKEN, ORGANIZATION, WorkerWorld

#: Starting peerbot local (its imports, Slack, Socket Mode) and a worker turn each take a few seconds.
START_TIMEOUT = 20.0
TURN_TIMEOUT = 30.0
#: Stopping waits for running workers to save and push (they need a few seconds at most).
STOP_TIMEOUT = 30.0
FILE_POLL_SECONDS = 0.05


class LocalProcess:
    """``peerbot local`` as a child process with its output in a file."""

    def __init__(self, world: WorkerWorld, root: Path, name: str, *, github: bool = True) -> None:
        self.world = world
        self.root = root
        self.log = root / f"{name}.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PEERBOT_", "SLACK_"))}
        env.update(
            {
                "SLACK_BOT_TOKEN": world.slack.bot_token,
                "SLACK_APP_TOKEN": world.slack.app_token,
                "SLACK_API_URL": world.slack.api_url,
                "ANTHROPIC_API_KEY": world.claude.api_key,
                "ANTHROPIC_BASE_URL": world.claude.url,
                "GITHUB_TOKEN": GITHUB_TOKEN,
                "GITHUB_API_URL": world.github.api_url,
                "GITHUB_ORGANIZATION": ORGANIZATION,
                "PEERBOT_LOCAL_DIR": str(root / "local"),
                "PORT": "0",
                "LOG_FORMAT": "json",
            }
        )
        if not github:  # repositories in local git, under PEERBOT_LOCAL_DIR/repositories
            for name in ("GITHUB_TOKEN", "GITHUB_API_URL"):
                env.pop(name)
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "peerbot.cli", "local"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_connected(self) -> None:
        try:
            self.world.slack.wait_for_socket_connection(timeout=START_TIMEOUT)
        except Exception:
            raise AssertionError(f"peerbot local did not connect:\n{self.output()[-4000:]}") from None

    def interrupt(self) -> int:
        """Ctrl-C, as in a terminal; returns the exit status."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"peerbot local did not stop:\n{self.output()[-4000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path / "world") as world:
        world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
        yield world


@pytest.fixture
def start(world: WorkerWorld, tmp_path: Path) -> Iterator[Callable[..., LocalProcess]]:
    started: list[LocalProcess] = []

    def run(*, github: bool = True) -> LocalProcess:
        local = LocalProcess(world, tmp_path, f"local-{len(started) + 1}", github=github)
        started.append(local)
        local.wait_connected()
        return local

    yield run
    for local in started:
        local.kill()


def conversation_file(tmp_path: Path, name: str) -> Path:
    return tmp_path / "local" / "conversations" / f"{name}.json"


def wait_for_status(path: Path, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Re-read a Conversation file another process writes until ``predicate(status)`` holds."""
    deadline = time.monotonic() + TURN_TIMEOUT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if path.exists():
            status = json.loads(path.read_text()).get("status") or {}
            if predicate(status):
                return status
        time.sleep(FILE_POLL_SECONDS)
    raise AssertionError(f"{what} did not happen within {TURN_TIMEOUT:g} s; the status is {status}")


def bot_said(world: WorkerWorld, thread_ts: str, words: str) -> Callable[[], bool]:
    channel = world.slack.public_channel
    return lambda: any(
        words in message.text
        for message in world.slack.thread(channel, thread_ts)
        if message.user == world.slack.bot_user_id
    )


def local_file(bare: Path, branch: str, path: str) -> str:
    """A file on a branch of a bare repository, read with plain git."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    done = subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=bare, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def history_text(request: ReceivedRequest) -> str:
    return json.dumps(request.messages)


def test_a_mention_becomes_a_local_worker_run_and_a_reply_continues_it(
    world: WorkerWorld, start: Callable[[], LocalProcess], tmp_path: Path
) -> None:
    slack = world.slack
    world.claude.load(
        [
            Reply.bash("echo 'y = 2' >> app.py"),
            Reply.text("Added y to app.py."),
            lambda request: Reply.text(
                "Still here: I remember adding y."
                if "Added y to app.py." in history_text(request)
                else "Who?"
            ),
        ]
    )
    local = start()

    mention = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} add y to app.py")
    ts = mention["event"]["ts"]
    slack.send_socket_event(mention).wait(timeout=5)
    slack.wait_until(
        bot_said(world, ts, "Added y to app.py."), timeout=TURN_TIMEOUT, description="the answer"
    )
    name = conversation_name(slack.team_id, slack.public_channel, ts)
    status = wait_for_status(
        conversation_file(tmp_path, name),
        lambda s: s.get("phase") == "Waiting" and s.get("answeredTs") == ts,
        "the answer recorded",
    )
    assert status["job"] == f"{name}-t1"
    repository = world.user_repository(slack.human)
    branch = f"peerbot/{slack.public_channel.lower()}-{ts.replace('.', '-')}"
    assert world.github.read_file(repository, branch, "app.py") == b"x = 1\ny = 2\n"

    reply = slack.message_event(slack.human, slack.public_channel, "do you remember?", thread_ts=ts)
    slack.send_socket_event(reply).wait(timeout=5)
    reply_ts = reply["event"]["ts"]
    slack.wait_until(
        bot_said(world, ts, "I remember adding y"), timeout=TURN_TIMEOUT, description="the follow-up"
    )
    status = wait_for_status(
        conversation_file(tmp_path, name),
        lambda s: s.get("answeredTs") == reply_ts and s.get("phase") == "Waiting",
        "the follow-up recorded",
    )
    assert status["turns"] == 2
    assert status["job"] == f"{name}-t2"
    assert (
        tmp_path / "local" / "sessions" / slack.team_id / slack.public_channel / ts / "head.json"
    ).exists()

    assert local.interrupt() == 0
    assert "peerbot local is running" in local.output()
    assert "repositories   GitHub" in local.output()
    assert GITHUB_TOKEN not in local.output()


def test_ctrl_c_pauses_a_turn_and_the_next_start_finishes_it_with_nothing_lost(
    world: WorkerWorld, start: Callable[..., LocalProcess], tmp_path: Path
) -> None:
    slack = world.slack
    gate = threading.Event()
    world.claude.load(
        [
            Reply.bash("echo 'y = 2' >> app.py"),
            # The second model step is held: peerbot local is stopped while the worker waits for it.
            Reply.text("never sent").held_until(gate),
            lambda request: Reply.text(
                "Resumed: y is added."
                if "echo 'y = 2' >> app.py" in history_text(request)
                else "I lost what I did before."
            ),
        ]
    )
    first = start(github=False)
    mention = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} add y to app.py")
    ts = mention["event"]["ts"]
    slack.send_socket_event(mention).wait(timeout=5)
    name = conversation_name(slack.team_id, slack.public_channel, ts)
    try:
        world.claude.wait_for_requests(2, timeout=TURN_TIMEOUT)
        assert first.interrupt() == 0, first.output()[-4000:]
    finally:
        gate.set()

    # Paused, not failed: the step before the stop is saved, the work pushed, the thread told.
    record = JobRecord.model_validate_json((tmp_path / "local" / "jobs" / f"{name}-t1.json").read_text())
    assert record.state == JobState.INTERRUPTED
    assert json.loads(conversation_file(tmp_path, name).read_text())["status"]["phase"] == "Running"
    assert bot_said(world, ts, "picks up from there")()
    branch = f"peerbot/{slack.public_channel.lower()}-{ts.replace('.', '-')}"
    # No GITHUB_TOKEN: the user's repository was made in local git, and the work pushed there.
    bare = tmp_path / "local" / "repositories" / world.user_repository(slack.human)
    bare = bare.with_name(bare.name + ".git")
    assert local_file(bare, branch, "app.py") == "y = 2\n"
    assert "repositories stay on this machine" in first.output()
    slack.wait_until(
        lambda: slack.socket_connections == 0, timeout=5, description="the old connection closed"
    )

    second = start(github=False)
    slack.wait_until(
        bot_said(world, ts, "Resumed: y is added."), timeout=TURN_TIMEOUT, description="the answer"
    )
    status = wait_for_status(
        conversation_file(tmp_path, name),
        lambda s: s.get("phase") == "Waiting" and s.get("answeredTs") == ts,
        "the resumed turn recorded",
    )
    assert (status["turns"], status["job"]) == (1, f"{name}-t1")  # the same turn, finished
    record = JobRecord.model_validate_json((tmp_path / "local" / "jobs" / f"{name}-t1.json").read_text())
    assert (record.state, record.runs, record.exit_code) == (JobState.FINISHED, 2, 0)
    # The pull request is a record next to the repository; the thread shows where.
    page = bare.with_name(bare.name.removesuffix(".git") + ".pulls") / "1.md"
    assert json.loads(page.with_suffix(".json").read_text())["head"] == branch
    assert f"#1 ({page})" in slack.render_thread(slack.public_channel, ts)
    assert world.github.pull_requests(world.user_repository(slack.human)) == []  # GitHub never asked
    assert second.interrupt() == 0
