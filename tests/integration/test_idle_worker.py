"""The idle worker (``peerbot worker --idle``): one claim, with the pod's token, then exactly one turn.

In-process, the claim server's rules: the token, the pointers, one claim only (the same claim again is
fine, any other is refused), the idle timeout and SIGTERM. As a real process, the whole thing: it warms up,
is claimed with the very request the operator sends, runs a real turn against the Slack, Claude and GitHub
stand-ins, writes its result document and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from peerbot import claim
from peerbot.conversation import ConversationSpec
from peerbot.operator.jobs import JobSettings
from peerbot.operator.warm import claim_request
from peerbot.planner import TurnRequest
from peerbot.result import Outcome, TurnResult
from peerbot.testing.claude import Reply
from peerbot.testing.warm import free_port
from peerbot.testing.worker import GITHUB_TOKEN, ORGANIZATION, WorkerWorld
from peerbot.worker.idle import IdleWorker
from peerbot.worker.pointers import TurnPointers

TOKEN = "the-pods-own-claim-token"
JOBS = JobSettings(
    namespace="default",
    image="registry.test/peerbot-worker:test",
    service_account="peerbot-worker",
    secret_name="peerbot-secrets",
    cpu="1",
    memory="1Gi",
    session_timeout_minutes=5,
)
WAIT = 10.0


def request_for(team: str, channel: str, ts: str, user: str, turn: int = 1) -> TurnRequest:
    spec = ConversationSpec.model_validate(
        {"team": team, "channel": channel, "threadTs": ts, "user": user, "requestedTs": ts}
    )
    name = f"c-{ts.replace('.', '-')}"
    return TurnRequest(name, turn, 1, f"{name}-t{turn}", spec, None)


def body(turn_name: str = "c-1-t1", **pointer_changes: str | None) -> dict[str, Any]:
    request = request_for("T0001", "C0001", "1700000000.000100", "U0001")
    pointers = dict(claim_request(request, JOBS, "uid", datetime.now(UTC)).pointers)
    for name, value in pointer_changes.items():
        if value is None:
            pointers.pop(name, None)
        else:
            pointers[name] = value
    return {"claim": turn_name, "pointers": pointers}


class Gate:
    """A turn script that records its pointers and waits until the test lets it finish."""

    def __init__(self) -> None:
        self.pointers: list[TurnPointers] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, pointers: TurnPointers) -> int:
        self.pointers.append(pointers)
        self.started.set()
        await self.release.wait()
        return 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


async def start(worker: IdleWorker) -> asyncio.Task[int]:
    await worker.start()
    serving = asyncio.create_task(worker.serve())
    async with asyncio.timeout(WAIT):
        await worker.ready_event.wait()
    return serving


async def post(http: aiohttp.ClientSession, worker: IdleWorker, data: Any, token: str | None = TOKEN) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    async with http.post(f"{worker.url}{claim.CLAIM_PATH}", data=payload, headers=headers) as response:
        return response.status


async def test_one_claim_with_the_pods_token_then_one_turn(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    worker = IdleWorker(
        token_digest=claim.token_digest(TOKEN), run_turn=gate, host="127.0.0.1", port=0, idle_timeout=WAIT
    )
    serving = await start(worker)
    async with http.get(f"{worker.url}{claim.READY_PATH}") as ready:
        assert ready.status == 200

    # No token, a wrong one, or a token in the wrong scheme: 401, and nothing is claimed.
    assert await post(http, worker, body(), token=None) == 401
    assert await post(http, worker, body(), token="guessed") == 401
    async with http.post(
        f"{worker.url}{claim.CLAIM_PATH}", json=body(), headers={"Authorization": f"Basic {TOKEN}"}
    ) as response:
        assert response.status == 401
    # Not a claim, something that is not a pointer, or pointers a turn cannot run with: 400.
    assert await post(http, worker, b"{not json") == 400
    assert await post(http, worker, body(SLACK_BOT_TOKEN="xoxb-evil")) == 400
    assert await post(http, worker, body(PEERBOT_RESULT_FILE="/etc/passwd")) == 400
    assert await post(http, worker, body(PEERBOT_TEAM=None)) == 400
    assert await post(http, worker, body(PEERBOT_THREAD_TS="yesterday")) == 400
    assert worker.claimed is None
    assert worker.refused == {401: 3, 400: 5}

    assert await post(http, worker, body("c-1-t1")) == 202
    async with asyncio.timeout(WAIT):
        await gate.started.wait()
    assert await post(http, worker, body("c-1-t1")) == 200  # the operator retrying a lost answer
    assert await post(http, worker, body("c-2-t1")) == 409  # never a second turn
    async with http.get(f"{worker.url}{claim.READY_PATH}") as ready:
        assert ready.status == 503
        assert (await ready.json())["status"] == "claimed"
    gate.release.set()
    async with asyncio.timeout(WAIT):
        assert await serving == 0
    assert len(gate.pointers) == 1
    assert gate.pointers[0].peerbot_thread_ts == "1700000000.000100"
    assert worker.claimed == "c-1-t1"


async def test_of_many_claims_at_once_exactly_one_wins(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    worker = IdleWorker(
        token_digest=claim.token_digest(TOKEN), run_turn=gate, host="127.0.0.1", port=0, idle_timeout=WAIT
    )
    serving = await start(worker)
    statuses = await asyncio.gather(*(post(http, worker, body(f"c-{n}-t1")) for n in range(20)))
    assert sorted(statuses) == [202] + [409] * 19
    gate.release.set()
    async with asyncio.timeout(WAIT):
        assert await serving == 0
    assert len(gate.pointers) == 1


async def test_an_unclaimed_worker_exits_on_its_idle_timeout_or_on_sigterm(
    http: aiohttp.ClientSession,
) -> None:
    gate = Gate()
    worker = IdleWorker(
        token_digest=claim.token_digest(TOKEN), run_turn=gate, host="127.0.0.1", port=0, idle_timeout=0.2
    )
    serving = await start(worker)
    async with asyncio.timeout(WAIT):
        assert await serving == 0
    assert not gate.pointers

    worker = IdleWorker(
        token_digest=claim.token_digest(TOKEN), run_turn=gate, host="127.0.0.1", port=0, idle_timeout=WAIT
    )
    serving = await start(worker)
    worker.terminate()
    async with asyncio.timeout(WAIT):
        assert await serving == 0
    assert not gate.pointers
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, worker, body())


# --- the real process ---------------------------------------------------------------------------------------


def idle_environment(world: WorkerWorld, root: Path, port: int, **extra: str) -> dict[str, str]:
    """What the pool's idle pod would have in its environment (no pointer of any turn)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PEERBOT_", "SLACK_", "GITHUB_", "ANTHROPIC_", "GCS_", "SESSION_"))
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
            "SESSION_STORE": "local",
            "SESSION_DIR": str(world.root / "sessions"),
            "WORKSPACE_DIR": str(root / "workspace"),
            "HOME": str(root / "workspace" / "home"),
            "PEERBOT_RESULT_FILE": str(root / "termination-log"),
            claim.ENV_TOKEN_DIGEST: claim.token_digest(TOKEN),
            claim.ENV_IDLE_HOST: "127.0.0.1",
            claim.ENV_IDLE_PORT: str(port),
            "LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


class Process:
    """``peerbot worker --idle`` as a pod runs it, with its log lines read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str]) -> Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "peerbot.cli",
            "worker",
            "--idle",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": raw.decode(errors="replace").strip()}
            async with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()

    async def wait_for_log(self, event: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait for a log line (the worker says when it is ready): no polling, no sleeping."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(
                    lambda: any(line.get("event") == event for line in self.lines) or self.reader.done()
                )
        except TimeoutError:
            raise TimeoutError(
                f"no {event!r} in {timeout} s; the worker logged: {self.lines[-10:]}"
            ) from None
        assert any(line.get("event") == event for line in self.lines), self.lines[-10:]

    async def wait(self, timeout: float = 60.0) -> int:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self.reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.reader


async def test_a_real_idle_worker_is_claimed_and_runs_a_real_turn(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with WorkerWorld(tmp_path / "world") as world:
        world.seed_repository(world.slack.human, {"README.md": "# hello\n"})
        thread = world.new_thread("@peerbot say hello")
        world.claude.load([Reply.text("Hello from a warm worker.")])
        port = free_port()
        process = await Process.start(idle_environment(world, tmp_path, port))
        try:
            await process.wait_for_log("idle_worker_ready")
            # The idle worker held no user data until now: the thread has not been read.
            assert not world.claude.requests
            request = request_for(thread.team, thread.channel, thread.ts, thread.user)
            handoff = claim_request(request, JOBS, "uid", datetime.now(UTC)).model_dump()
            url = f"http://127.0.0.1:{port}{claim.CLAIM_PATH}"
            async with http.post(url, json=handoff, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 202, await response.text()
            code = await process.wait()
        finally:
            await process.kill()
        assert code == 0, process.lines[-10:]
        result = TurnResult.parse((tmp_path / "termination-log").read_text())
        assert result is not None
        assert result.outcome is Outcome.DONE
        assert result.answered_ts == thread.ts
        assert "Hello from a warm worker." in world.slack.render_thread(thread.channel, thread.ts)
        assert any(line.get("event") == "idle_worker_claimed" for line in process.lines)
        assert GITHUB_TOKEN not in json.dumps(process.lines)


async def test_a_real_idle_worker_leaves_at_once_on_sigterm_and_refuses_a_bad_bot_token(
    tmp_path: Path,
) -> None:
    with WorkerWorld(tmp_path / "world") as world:
        process = await Process.start(idle_environment(world, tmp_path, free_port()))
        try:
            await process.wait_for_log("idle_worker_ready")
            process.process.send_signal(signal.SIGTERM)
            assert await process.wait(timeout=WAIT) == 0
        finally:
            await process.kill()
        assert not (tmp_path / "termination-log").exists()  # no turn, no result

        env = idle_environment(world, tmp_path, free_port(), SLACK_BOT_TOKEN="xoxb-not-a-real-token")
        process = await Process.start(env)
        try:
            assert await process.wait(timeout=30) == 2  # never ready, never claimable: the pool replaces it
        finally:
            await process.kill()
        assert any("SLACK_BOT_TOKEN was refused" in json.dumps(line) for line in process.lines)
