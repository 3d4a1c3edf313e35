"""The local runner against a tiny fake worker: the operator's rules, carried out with local processes.

The fake worker (:data:`FAKE_WORKER`) reports to the test over a Unix socket as soon as it starts (with
the environment it got), then does what the test tells it: answer, pause, fail, crash, or wait and react
to SIGTERM as the real worker does (save, leave no result, exit 143), pause on it, or ignore it. Every
wait is on an event (a message on the socket, a planning pass of the runner, a change in the Slack
stand-in), bounded, and fails with what was expected.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.conversation import ConversationSpec
from peerbot.dispatcher.store import RequestRecord
from peerbot.local.jobs import JobRecord, JobState
from peerbot.local.runner import LocalRunner, RunnerBusyError, RunnerFolders
from peerbot.local.store import ConversationFiles, FileConversationStore
from peerbot.naming import conversation_name
from peerbot.planner import PlannerSettings
from peerbot.testing.slack import SlackStandIn

#: Bounds every wait in these tests; a worker start is a Python start-up, well under a second.
WAIT = 10.0

FAKE_WORKER = r"""
import json, os, signal, socket, sys
from pathlib import Path

sock = socket.socket(socket.AF_UNIX)
sock.connect(os.environ["FAKE_CONTROL"])
commands = sock.makefile("r")

def send(**message):
    sock.sendall((json.dumps(message) + "\n").encode())

send(event="started", pid=os.getpid(), env=dict(os.environ))
behaviour = commands.readline().strip()
result_file = Path(os.environ["PEERBOT_RESULT_FILE"])
requested = os.environ["PEERBOT_REQUESTED_TS"]

def report(outcome, code, **extra):
    document = {"version": 1, "outcome": outcome, "tokens": {"input": 10, "output": 5}, "costUSD": 0.01}
    if outcome != "failed":
        document["answeredTs"] = requested
    document.update(extra)
    result_file.write_text(json.dumps(document))
    sys.exit(code)

def finish(how):
    if how == "done":
        report("done", 0)
    if how == "pause":
        report("paused", 10)
    if how == "fail":
        report("failed", 1, error={"kind": "claude", "message": "Claude could not answer. Try again."})
    sys.exit(3)  # "crash": no result at all

if behaviour.startswith("wait"):
    on_term = behaviour.partition(":")[2] or "leave"

    def terminated(signum, frame):
        send(event="terminated")
        if on_term == "ignore":
            return
        if on_term == "pause":
            report("paused", 10)
        os._exit(143)  # as the real worker: saved and pushed, no result

    signal.signal(signal.SIGTERM, terminated)
    send(event="waiting")
    finish(commands.readline().strip() or "crash")
finish(behaviour)
"""


@dataclass
class FakeWorker:
    """One fake worker process, as it reported in."""

    env: dict[str, str]
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def event(self) -> str:
        async with asyncio.timeout(WAIT):
            line = await self.reader.readline()
        return str(json.loads(line)["event"]) if line else "closed"

    async def tell(self, command: str) -> None:
        self.writer.write((command + "\n").encode())
        await self.writer.drain()


@dataclass
class Control:
    """The test's end of the socket: hands each starting worker its behaviour, queues it for the test."""

    path: Path
    behaviours: list[str] = field(default_factory=list)
    started: asyncio.Queue[FakeWorker] = field(default_factory=asyncio.Queue)
    workers: list[FakeWorker] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        message = json.loads(await reader.readline())
        behaviour = self.behaviours.pop(0) if self.behaviours else "done"
        writer.write((behaviour + "\n").encode())
        await writer.drain()
        worker = FakeWorker(message["env"], message["pid"], reader, writer)
        self.workers.append(worker)
        await self.started.put(worker)

    async def next_worker(self) -> FakeWorker:
        async with asyncio.timeout(WAIT):
            return await self.started.get()

    async def stop(self) -> None:
        for worker in self.workers:
            worker.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class World:
    root: Path
    slack: SlackStandIn
    control: Control
    fake: Path
    runners: list[LocalRunner] = field(default_factory=list)

    @property
    def folders(self) -> RunnerFolders:
        return RunnerFolders(self.root)

    @property
    def files(self) -> ConversationFiles:
        return ConversationFiles(self.folders.conversations, durable=False)

    def runner(self, **options: Any) -> LocalRunner:
        settings = options.pop("planner_settings", PlannerSettings(session_timeout_minutes=5))
        self.folders.create()
        runner = LocalRunner(
            folders=self.folders,
            files=self.files,
            slack=AsyncWebClient(token=self.slack.bot_token, base_url=self.slack.api_url),
            planner_settings=settings,
            base_env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "FAKE_CONTROL": str(self.control.path),
                "SLACK_BOT_TOKEN": self.slack.bot_token,
                "SLACK_APP_TOKEN": "xapp-the-dispatchers-only",
                "PEERBOT_TURN": "999",  # a stale pointer in the environment: the turn's own wins
            },
            worker_command=options.pop("worker_command", (sys.executable, str(self.fake))),
            kill_grace=options.pop("kill_grace", 5.0),
            durable=False,
            **options,
        )
        self.runners.append(runner)
        return runner

    def thread(self, text: str = "fix the tests") -> tuple[str, str]:
        """A person starts a thread; returns (conversation name, thread ts)."""
        message = self.slack.post_message(self.slack.human, self.slack.public_channel, text)
        return conversation_name(self.slack.team_id, self.slack.public_channel, message.ts), message.ts

    async def ask(self, name: str, thread_ts: str, requested_ts: str | None = None) -> None:
        """What the dispatcher does for a message: record it on the thread's Conversation."""
        spec = ConversationSpec(
            team=self.slack.team_id,
            channel=self.slack.public_channel,
            threadTs=thread_ts,
            user=self.slack.human,
            requestedTs=requested_ts or thread_ts,
        )
        runner = self.runners[-1] if self.runners else None
        store = FileConversationStore(self.files, on_change=runner.poke if runner else None)
        recorded = await store.record(RequestRecord(name, spec))
        assert recorded.won

    def reply(self, thread_ts: str, text: str) -> str:
        return self.slack.post_message(
            self.slack.human, self.slack.public_channel, text, thread_ts=thread_ts
        ).ts

    def status(self, name: str) -> dict[str, Any]:
        body = self.files.get(name)
        assert body is not None
        return dict(body.get("status") or {})

    async def until(self, runner: LocalRunner, predicate: Callable[[], bool], what: str) -> None:
        runner.poke()
        await runner.wait_for(predicate, timeout=WAIT, description=what)

    def phase_is(self, name: str, phase: str) -> Callable[[], bool]:
        return lambda: self.status(name).get("phase") == phase

    def bot_said(self, thread_ts: str, words: str) -> Callable[[], bool]:
        return lambda: any(
            words in message.text
            for message in self.slack.thread(self.slack.public_channel, thread_ts)
            if message.user == self.slack.bot_user_id
        )


@pytest.fixture
async def world(tmp_path: Path, slack_standin: SlackStandIn) -> AsyncIterator[World]:
    # A Unix socket path is limited to about 100 bytes: pytest's tmp_path can be longer.
    short = Path(tempfile.mkdtemp(prefix="pbl-"))
    control = Control(short / "control.sock")
    await control.start()
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE_WORKER)
    world = World(tmp_path / "local", slack_standin, control, fake)
    try:
        yield world
    finally:
        forced = asyncio.Event()
        forced.set()
        for runner in world.runners:
            await runner.stop(force=forced)
        await control.stop()
        shutil.rmtree(short, ignore_errors=True)


async def test_a_request_becomes_a_worker_with_the_operators_pointers_and_its_answer_is_recorded(
    world: World,
) -> None:
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    worker = await world.control.next_worker()
    env = worker.env
    assert env["PEERBOT_CONVERSATION"] == name
    assert env["PEERBOT_TURN"] == "1"
    assert env["PEERBOT_THREAD_TS"] == env["PEERBOT_REQUESTED_TS"] == ts
    assert env["PEERBOT_ANSWERED_TS"] == ""
    assert env["PEERBOT_CHANNEL"] == world.slack.public_channel
    deadline = datetime.fromisoformat(env["PEERBOT_DEADLINE"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < deadline - datetime.now(UTC) <= timedelta(minutes=5)
    assert env["SESSION_TIMEOUT_MINUTES"] == "5"
    assert env["SESSION_STORE"] == "local"
    assert env["SESSION_DIR"] == str(world.folders.sessions)
    workspace = world.folders.workspace(f"{name}-t1")
    assert env["WORKSPACE_DIR"] == str(workspace)
    assert env["HOME"] == str(workspace / "home")  # not the person's own dotfiles
    assert env["PEERBOT_RESULT_FILE"] == str(world.folders.result(f"{name}-t1"))
    assert "SLACK_APP_TOKEN" not in env  # the dispatcher's token only
    assert env["SLACK_BOT_TOKEN"] == world.slack.bot_token

    await world.until(runner, world.phase_is(name, "Waiting"), "the answer recorded")
    status = world.status(name)
    assert status["answeredTs"] == ts
    assert status["turns"] == 1
    assert status["job"] == f"{name}-t1"
    assert status["tokens"]["total"] == 15
    (record,) = runner.records()
    assert (record.state, record.exit_code) == (JobState.FINISHED, 0)
    assert not workspace.exists()  # like a pod's emptyDir, gone with the worker
    on_disk = JobRecord.model_validate_json(world.folders.record(record.name).read_text())
    assert on_disk.state == JobState.FINISHED


async def test_a_reply_starts_the_next_turn_which_knows_what_was_answered(world: World) -> None:
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    await world.control.next_worker()
    await world.until(runner, world.phase_is(name, "Waiting"), "the first answer")

    reply = world.reply(ts, "now add a test")
    await world.ask(name, ts, reply)
    second = await world.control.next_worker()
    assert second.env["PEERBOT_TURN"] == "2"
    assert second.env["PEERBOT_REQUESTED_TS"] == reply
    assert second.env["PEERBOT_ANSWERED_TS"] == ts
    await world.until(
        runner, lambda: world.status(name).get("answeredTs") == reply, "the reply answered by turn 2"
    )
    assert world.status(name)["turns"] == 2
    assert world.status(name)["tokens"]["total"] == 30


@pytest.mark.parametrize(
    ("behaviour", "phase", "exit_code", "told"),
    [
        ("pause", "Waiting", 10, None),  # the worker said so itself
        ("fail", "Failed", 1, None),  # the worker said so itself
        ("crash", "Failed", 3, "exit code 3"),  # no result: the runner says what it saw
    ],
)
async def test_outcomes_are_decided_by_the_planner_from_the_result_and_the_exit(
    world: World, behaviour: str, phase: str, exit_code: int, told: str | None
) -> None:
    world.control.behaviours = [behaviour]
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    await world.until(runner, world.phase_is(name, phase), f"phase {phase}")
    (record,) = runner.records()
    assert record.exit_code == exit_code
    if behaviour == "fail":
        assert world.status(name)["error"] == "Claude could not answer. Try again."
    if told is not None:
        await world.slack.wait_until_async(world.bot_said(ts, told), description=f"the thread told {told!r}")
        assert world.slack.message(world.slack.public_channel, ts).reactions.get("x")


@pytest.mark.parametrize(("on_term", "phase"), [("ignore", "TimedOut"), ("pause", "Waiting")])
async def test_the_time_limit_stops_a_worker_as_active_deadline_seconds_does(
    world: World, on_term: str, phase: str
) -> None:
    """SIGTERM at the deadline, SIGKILL after the grace period; a worker that paused on time is Waiting."""
    world.control.behaviours = [f"wait:{on_term}"]
    runner = world.runner(timeout=timedelta(seconds=0.5), kill_grace=0.3)
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    worker = await world.control.next_worker()
    assert await worker.event() == "waiting"
    assert await worker.event() == "terminated"
    await world.until(runner, world.phase_is(name, phase), f"phase {phase}")
    (record,) = runner.records()
    assert record.reason == "DeadlineExceeded"
    if on_term == "ignore":
        assert record.exit_code == 137  # SIGKILL after the grace period
        await world.slack.wait_until_async(
            world.bot_said(ts, "5-minute limit"), description="the limit notice"
        )
    else:
        assert record.exit_code == 10


async def test_a_cancel_deletes_the_job_and_the_worker_gets_sigterm(world: World) -> None:
    world.control.behaviours = ["wait"]
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    worker = await world.control.next_worker()
    assert await worker.event() == "waiting"
    await FileConversationStore(world.files, on_change=runner.poke).request_cancel(name, datetime.now(UTC))
    assert await worker.event() == "terminated"
    await world.until(
        runner,
        lambda: world.status(name).get("phase") == "Cancelled" and not runner.records(),
        "the Conversation cancelled and its Job gone",
    )
    await world.slack.wait_until_async(world.bot_said(ts, "Stopped."), description="the stop notice")
    assert not world.folders.record(f"{name}-t1").exists()


async def test_stopping_interrupts_a_turn_and_the_next_start_continues_it(world: World) -> None:
    world.control.behaviours = ["wait", "done"]
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    worker = await world.control.next_worker()
    assert await worker.event() == "waiting"

    await runner.stop()
    assert await worker.event() == "terminated"  # SIGTERM: the real worker saves and pushes here
    (record,) = runner.records()
    assert record.state == JobState.INTERRUPTED
    assert world.status(name)["phase"] == "Running"  # nothing recorded as failed
    await world.slack.wait_until_async(
        world.bot_said(ts, "picks up from there"), description="the pause notice"
    )

    again = world.runner()
    await again.start()
    resumed = await world.control.next_worker()
    assert resumed.env["PEERBOT_TURN"] == "1"  # the same turn, not a new one
    assert resumed.env["WORKSPACE_DIR"] == worker.env["WORKSPACE_DIR"]
    await world.until(again, world.phase_is(name, "Waiting"), "the resumed turn answered")
    (record,) = again.records()
    assert (record.name, record.runs, record.attempt) == (f"{name}-t1", 2, 1)
    assert world.status(name)["turns"] == 1


async def test_a_worker_that_outlived_its_runner_is_adopted_and_one_that_vanished_is_retried_once(
    world: World,
) -> None:
    """A runner killed without warning leaves its workers running (their own process group)."""
    first_name, first_ts = world.thread("one")
    second_name, second_ts = world.thread("two")
    world.folders.create()
    await world.ask(first_name, first_ts)
    await world.ask(second_name, second_ts)
    now = datetime.now(UTC)
    for name, ts in ((first_name, first_ts), (second_name, second_ts)):
        world.files.patch_status(
            name, {"phase": "Running", "job": f"{name}-t1", "turns": 1, "attemptedTs": ts}
        )
    # The first worker is still running, holding its liveness lock, as a real orphan would.
    record = JobRecord(
        name=f"{first_name}-t1",
        conversation=first_name,
        turn=1,
        requested_ts=first_ts,
        spec=world.files.get(first_name)["spec"],  # type: ignore[index]
        created_at=now,
        runs=1,
        started_at=now,
        deadline=now + timedelta(minutes=5),
    )
    world.control.behaviours = ["wait"]
    orphan = _start_orphan(world, record)
    worker = await world.control.next_worker()
    assert await worker.event() == "waiting"
    world.folders.record(record.name).write_text(
        record.model_copy(update={"pid": orphan.pid}).model_dump_json()
    )
    # The second one vanished with the runner (no process, no result).
    lost = record.model_copy(
        update={"name": f"{second_name}-t1", "conversation": second_name, "requested_ts": second_ts, "pid": 1}
    )
    lost = lost.model_copy(update={"spec": world.files.get(second_name)["spec"]})  # type: ignore[index]
    world.folders.record(lost.name).write_text(lost.model_dump_json())

    world.control.behaviours = ["done"]
    runner = world.runner()
    await runner.start()
    retried = await world.control.next_worker()  # the lost pod's second attempt
    assert retried.env["PEERBOT_CONVERSATION"] == second_name
    await world.until(runner, world.phase_is(second_name, "Waiting"), "the lost turn retried and answered")
    assert world.status(second_name)["job"] == f"{second_name}-t1-a2"

    assert world.status(first_name)["phase"] == "Running"  # adopted, still running
    await worker.tell("done")
    await world.until(runner, world.phase_is(first_name, "Waiting"), "the adopted worker's answer recorded")
    assert orphan.wait(WAIT) == 0


def _start_orphan(world: World, record: JobRecord) -> subprocess.Popen[bytes]:
    import fcntl

    from peerbot.local.jobs import worker_environment

    workspace = world.folders.workspace(record.name)
    (workspace / "home").mkdir(parents=True)
    (workspace / "tmp").mkdir()
    env = worker_environment(
        record.request(),
        base={"PATH": os.environ.get("PATH", ""), "FAKE_CONTROL": str(world.control.path)},
        now=datetime.now(UTC),
        deadline=record.deadline or datetime.now(UTC),
        timeout_minutes=5,
        session_dir=world.folders.sessions,
        workspace=workspace,
        result_file=world.folders.result(record.name),
        repositories_dir=world.folders.repositories,
    )
    alive = os.open(world.folders.alive(record.name), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(alive, fcntl.LOCK_EX)
    try:
        return subprocess.Popen(
            [sys.executable, str(world.fake)], env=env, start_new_session=True, pass_fds=(alive,)
        )
    finally:
        os.close(alive)


async def test_two_runners_never_share_a_folder(world: World) -> None:
    await world.runner().start()
    with pytest.raises(RunnerBusyError, match="another peerbot local"):
        await world.runner().start()
    world.runners.pop()


async def test_past_the_concurrency_limit_a_conversation_waits_in_the_queue(world: World) -> None:
    world.control.behaviours = ["wait", "done"]
    runner = world.runner(planner_settings=PlannerSettings(session_timeout_minutes=5, max_concurrent_jobs=1))
    await runner.start()
    first_name, first_ts = world.thread("one")
    await world.ask(first_name, first_ts)
    first = await world.control.next_worker()
    assert await first.event() == "waiting"
    second_name, second_ts = world.thread("two")
    await world.ask(second_name, second_ts)
    await world.until(runner, world.phase_is(second_name, "Queued"), "the second Conversation queued")
    assert world.status(second_name)["queuePosition"] == 1

    await first.tell("done")
    second = await world.control.next_worker()
    assert second.env["PEERBOT_CONVERSATION"] == second_name
    await world.until(runner, world.phase_is(second_name, "Waiting"), "the queued turn answered")


async def test_a_worker_that_cannot_even_start_fails_the_turn_and_says_so(world: World) -> None:
    runner = world.runner(worker_command=(str(world.root / "no-such-peerbot"), "worker"))
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    await world.until(runner, world.phase_is(name, "Failed"), "the turn failed")
    assert "exit code 127" in world.status(name)["error"]
    await world.slack.wait_until_async(world.bot_said(ts, "exit code 127"), description="the failure notice")


async def test_deleting_a_conversation_stops_its_worker_and_forgets_the_turn(world: World) -> None:
    world.control.behaviours = ["wait"]
    runner = world.runner()
    await runner.start()
    name, ts = world.thread()
    await world.ask(name, ts)
    worker = await world.control.next_worker()
    assert await worker.event() == "waiting"
    assert world.files.delete(name)  # the owner is gone: its Job goes too (ownerReference)
    runner.poke()
    assert await worker.event() == "terminated"
    await world.until(runner, lambda: not runner.records(), "the turn forgotten")
    assert not world.folders.record(f"{name}-t1").exists()
