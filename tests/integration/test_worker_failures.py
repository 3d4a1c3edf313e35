"""Bad input and outages: each is handled, the work is kept where it can be, and the person is told what
happened and what to do.

Bad input: an empty mention, a huge message, shared text and binary files, a tool that prints megabytes
and a secret. Outages: GitHub's API or git down, the session store failing writes or reads, Anthropic
overloaded for a moment or for good, a refused API key, Slack rejecting blocks or rate-limiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from google.api_core.exceptions import ServiceUnavailable

from peerbot.result import ErrorKind, ExitCode, Outcome
from peerbot.session.local import LocalObjects
from peerbot.session.store import ObjectBackend, SessionStore, StoredObject
from peerbot.testing.claude import Reply
from peerbot.testing.github import Fault
from peerbot.testing.worker import GITHUB_TOKEN, Thread, WorkerWorld
from peerbot.worker.model import MAX_ATTEMPTS
from peerbot.worker.redaction import Redactor
from peerbot.worker.slack_io import SlackThread, make_client


@pytest.fixture
def world(tmp_path: Path) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path) as world:
        world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
        yield world


def bot_texts(world: WorkerWorld, thread: Thread) -> list[str]:
    return [
        m.text for m in world.slack.thread(thread.channel, thread.ts) if m.user == world.slack.bot_user_id
    ]


def workspace_of(world: WorkerWorld, turn: int) -> Path:
    return world.root / "workspaces" / f"turn-{turn}"


class FlakyObjects(ObjectBackend):
    """Object storage that fails some writes or reads the way GCS does during an outage (503)."""

    def __init__(self, inner: ObjectBackend, *, failing_writes: int = 0, failing_reads: int = 0) -> None:
        self.inner = inner
        self.failing_writes = failing_writes
        self.failing_reads = failing_reads

    def read(self, name: str) -> StoredObject | None:
        if self.failing_reads:
            self.failing_reads -= 1
            raise ServiceUnavailable("GCS stand-in: the service is unavailable")  # type: ignore[no-untyped-call]
        return self.inner.read(name)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        if self.failing_writes:
            self.failing_writes -= 1
            raise ServiceUnavailable("GCS stand-in: the service is unavailable")  # type: ignore[no-untyped-call]
        return self.inner.write(name, data, if_generation_match=if_generation_match)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list_names(self, prefix: str) -> list[str]:
        return self.inner.list_names(prefix)

    def location(self, name: str) -> str:
        return self.inner.location(name)

    def read_many(self, names: Sequence[str]) -> list[StoredObject | None]:
        return [self.read(name) for name in names]


# --- bad input ----------------------------------------------------------------------------------------


async def test_an_empty_mention_gets_the_help_text_and_no_model_call(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot   ")
    run = await world.run_turn(thread)
    assert run.exit_code == ExitCode.DONE
    assert run.result is not None
    assert run.result.answered_ts == thread.ts
    assert world.claude.message_requests == []
    assert any("How to use Peerbot" in text for text in bot_texts(world, thread))
    session = world.store.load(thread.key)
    assert session is not None
    assert session.answered_ts == thread.ts


async def test_a_huge_message_is_cut_for_claude_and_kept_in_full(world: WorkerWorld) -> None:
    huge = "please read all of this. " + "lorem ipsum dolor sit amet " * 8000
    thread = world.new_thread(f"@peerbot {huge}")
    world.claude.load([Reply.text("Read it.")])
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    request = world.claude.message_requests[0]
    prompt = request.messages[0]["content"][0]["text"]
    assert len(prompt) < 25_000
    assert "the full text is in" in prompt
    saved = list((workspace_of(world, 1) / "attachments").glob("message-*.txt"))
    assert len(saved) == 1
    assert saved[0].read_text().endswith("sit amet")


async def test_shared_text_and_binary_files_are_saved_and_described(world: WorkerWorld) -> None:
    thread = world.new_thread(
        "@peerbot have a look at these",
        files=[("notes.txt", b"remember the milk\n"), ("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")],
    )
    world.claude.load([Reply.text("Seen both.")])
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    prompt = world.claude.message_requests[0].messages[0]["content"][0]["text"]
    assert "notes.txt" in prompt
    assert "logo.png" in prompt
    attachments = workspace_of(world, 1) / "attachments"
    text_file = next(attachments.glob("*-notes.txt"))
    assert text_file.read_bytes() == b"remember the milk\n"
    assert next(attachments.glob("*-logo.png")).read_bytes().startswith(b"\x89PNG")
    assert f"saved at {text_file} (text)" in prompt
    assert "(binary)" in prompt


async def test_megabytes_and_secrets_from_a_tool_never_reach_claude_slack_or_the_session(
    world: WorkerWorld,
) -> None:
    world.seed_repository(
        world.slack.human, {"config.env": f"GITHUB_TOKEN={GITHUB_TOKEN}\n"}, full_name="peerbot-community/cfg"
    )
    thread = world.new_thread("@peerbot print the config of repo=peerbot-community/cfg")
    world.claude.load(
        [
            Reply.bash("head -c 3000000 /dev/zero | tr '\\0' 'a'; echo; cat config.env"),
            Reply.text(f"The token is {GITHUB_TOKEN}, and the output was long."),
        ]
    )
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    result = world.claude.message_requests[1].messages[-1]["content"][0]
    assert len(result["content"]) < 40_000
    assert "bytes of output cut" in result["content"]
    assert "GITHUB_TOKEN=[REDACTED]" in result["content"]
    everything = json.dumps([r.messages for r in world.claude.message_requests])
    everything += world.slack.render_thread(thread.channel, thread.ts)
    everything += "".join(path.read_text() for path in (world.root / "sessions").rglob("*.json"))
    assert GITHUB_TOKEN not in everything
    assert "The token is [REDACTED]" in world.slack.render_thread(thread.channel, thread.ts)


# --- GitHub -------------------------------------------------------------------------------------------


async def test_a_missing_repository_is_explained_in_the_thread(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot work on repo=acme/nowhere please")
    run = await world.run_turn(thread)
    assert run.exit_code == ExitCode.FAILED
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.REPOSITORY
    texts = "\n".join(bot_texts(world, thread))
    assert "acme/nowhere" in texts
    assert "What to do" in texts
    assert world.claude.message_requests == []
    assert set(world.slack.message(thread.channel, thread.ts).reactions) == {"x"}


async def test_a_github_api_outage_is_retried_then_told(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot fix it")
    world.github.clear_requests()
    world.github.inject_fault(Fault.SERVICE_UNAVAILABLE, count=50, path_prefix="/repos/")
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.GITHUB
    assert len([r for r in world.github.requests() if r.fault is not None]) == 3  # tried three times
    assert "GitHub is not answering" in "\n".join(bot_texts(world, thread))
    assert world.store.load(thread.key) is None  # nothing was started, so the next reply starts cleanly


async def test_a_failed_push_keeps_the_work_as_a_patch_in_the_thread(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot add y")
    repository = world.user_repository(thread.user)

    def git_goes_down(point: str) -> None:
        if point == "model:after-checkpoint":
            world.github.inject_fault(Fault.SERVICE_UNAVAILABLE, count=100, path_prefix=f"/{repository}.git/")

    app = workspace_of(world, 1) / "repo" / "app.py"
    world.claude.load([Reply.create(str(app), "x = 1\ny = 2\n"), Reply.text("Added y.")])
    run = await world.run_turn(thread, fault=git_goes_down)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    assert run.result.branch is None
    assert run.result.pull_request is None
    rendered = world.slack.render_thread(thread.channel, thread.ts)
    assert "Added y." in rendered
    assert "could not push to GitHub" in rendered
    assert "git am" in rendered
    patches = [m for m in world.slack.thread(thread.channel, thread.ts) if m.files]
    assert len(patches) == 1
    assert patches[0].files[0]["name"].endswith(".patch")


# --- the session store --------------------------------------------------------------------------------


async def test_checkpoints_that_fail_for_a_while_are_saved_later(world: WorkerWorld) -> None:
    backend = FlakyObjects(LocalObjects(world.root / "flaky"), failing_writes=3)
    store = SessionStore(backend)
    thread = world.new_thread("@peerbot look")
    app = workspace_of(world, 1) / "repo" / "app.py"
    world.claude.load([Reply.view(str(app)), Reply.text("Looked.")])
    run = await world.run_turn(thread, store=store)
    assert run.result is not None, run.document
    assert run.result.outcome is Outcome.DONE, run.document
    session = store.load(thread.key)
    assert session is not None
    assert len(session.steps) == 4
    assert session.answered_ts == thread.ts


async def test_a_store_that_cannot_save_fails_the_turn_after_answering(world: WorkerWorld) -> None:
    store = SessionStore(FlakyObjects(LocalObjects(world.root / "down"), failing_writes=10_000))
    thread = world.new_thread("@peerbot hello")
    world.claude.load([Reply.text("Hello there.")])
    run = await world.run_turn(thread, store=store)
    assert run.exit_code == ExitCode.FAILED
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.STORAGE
    assert run.result.answered_ts is None
    texts = "\n".join(bot_texts(world, thread))
    assert "Hello there." in texts
    assert "could not save this turn" in texts


async def test_a_store_that_cannot_be_read_is_told_and_nothing_runs(world: WorkerWorld) -> None:
    store = SessionStore(FlakyObjects(LocalObjects(world.root / "down"), failing_reads=10_000))
    thread = world.new_thread("@peerbot hello")
    run = await world.run_turn(thread, store=store)
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.STORAGE
    assert "session store is not answering" in "\n".join(bot_texts(world, thread))
    assert world.claude.message_requests == []


# --- Anthropic ----------------------------------------------------------------------------------------


async def test_a_short_overload_is_retried_honouring_retry_after(world: WorkerWorld) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    thread = world.new_thread("@peerbot hi")
    world.claude.load([Reply.error(529), Reply.error(429, retry_after=7), Reply.text("Hi!")])
    run = await world.run_turn(thread, sleep=sleep)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    assert len(world.claude.message_requests) == 3
    assert waits[1] == 7
    assert 0 < waits[0] <= 1


async def test_an_outage_is_reported_once_without_hammering(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hi")
    world.claude.load([Reply.error(529)] * 20)
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.CLAUDE
    assert len(world.claude.message_requests) <= MAX_ATTEMPTS
    errors = [text for text in bot_texts(world, thread) if "overloaded or unreachable" in text]
    assert len(errors) == 1
    assert "Continue" in errors[0]
    session = world.store.load(thread.key)
    assert session is not None
    assert session.resume is not None
    assert session.resume.reason == "failed"


async def test_a_refused_api_key_says_who_must_fix_it(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hi")
    world.claude.load([Reply.error(401)])
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.error is not None
    assert "ANTHROPIC_API_KEY" in run.result.error.message
    assert len(world.claude.message_requests) == 1
    assert "ANTHROPIC_API_KEY" in "\n".join(bot_texts(world, thread))


# --- Slack --------------------------------------------------------------------------------------------


async def test_a_message_slack_rejects_is_sent_again_as_plain_text(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hi")
    client = make_client(world.slack.bot_token, world.slack.api_url)
    slack_thread = SlackThread(client, thread.channel, thread.ts, redact=Redactor())
    too_long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    ts = await slack_thread.post({"text": "fallback text", "blocks": [too_long]})
    assert slack_thread.fallbacks == 1
    assert [call.error for call in world.slack.calls("chat.postMessage")][-2:] == ["invalid_blocks", None]
    posted = world.slack.message(thread.channel, str(ts))
    assert posted.blocks == ()
    assert posted.text.startswith("x" * 100)


async def test_slack_rate_limits_are_waited_out_and_nothing_is_lost(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hi")
    world.claude.load([Reply.text("Answer despite the rate limit.")])
    world.slack.fail_next("chat.postMessage", times=2, retry_after=0)
    run = await world.run_turn(thread)
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    statuses = [call.status for call in world.slack.calls("chat.postMessage")]
    assert statuses.count(429) == 2
    assert "Answer despite the rate limit." in world.slack.render_thread(thread.channel, thread.ts)


async def test_a_slack_token_slack_refuses_fails_the_turn_as_a_slack_error(world: WorkerWorld) -> None:
    thread = world.new_thread("@peerbot hi")
    run = await world.run_turn(thread, settings={"slack_bot_token": "xoxb-0000-0000-revoked"})
    assert run.exit_code == ExitCode.FAILED
    assert run.result is not None
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.SLACK
    assert "SLACK_BOT_TOKEN" in run.result.error.message
    assert world.claude.message_requests == []
