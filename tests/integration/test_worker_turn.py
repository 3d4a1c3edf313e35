"""A whole worker turn against the stand-ins, checked as a person would check it.

The scripted Claude reads a file, edits it, runs the repository's tests with bash and answers. Then: the
branch commit and the draft pull request on the GitHub stand-in, the thread in the Slack stand-in (status
edits, reactions, the answer within Slack's limits with links and footer), the session in the GCS stand-in,
and the result document. A second turn in the same thread continues the same session and pull request.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerbot.result import ExitCode, Outcome
from peerbot.session.gcs import GcsSessionStore
from peerbot.slack_messages import check_message
from peerbot.testing.claude import Reply
from peerbot.testing.gcs import GcsStandIn
from peerbot.testing.worker import GITHUB_TOKEN, WorkerWorld

APP = "def value():\n    return 1\n"
TEST = (
    "import unittest\n\nfrom app import value\n\n\n"
    "class ValueTest(unittest.TestCase):\n    def test_value(self):\n        self.assertEqual(value(), 2)\n"
)
#: The repository's tests, run the way a person would (unittest starts in milliseconds, pytest in seconds).
RUN_TESTS = f"{sys.executable} -m unittest -v 2>&1 | tail -3"


@pytest.fixture
def world(tmp_path: Path, gcs_bucket: Any) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path, store=GcsSessionStore(gcs_bucket)) as world:
        yield world


def bot_messages(world: WorkerWorld, channel: str, ts: str) -> list[Any]:
    return [m for m in world.slack.thread(channel, ts) if m.user == world.slack.bot_user_id]


async def test_a_turn_reads_edits_tests_answers_and_leaves_everything_in_place(
    world: WorkerWorld, gcs_standin: GcsStandIn, gcs_bucket: Any
) -> None:
    user = world.slack.human
    repository = world.seed_repository(user, {"app.py": APP, "test_app.py": TEST})
    thread = world.new_thread("@peerbot the test fails, please fix `value()`")
    status_ts = world.post_status_message(thread)
    app = world.root / "workspaces" / "turn-1" / "repo" / "app.py"
    world.claude.load(
        [
            Reply.view(str(app), text="Let me look at the code."),
            Reply.str_replace(str(app), "return 1", "return 2"),
            Reply.bash(RUN_TESTS),
            lambda request: Reply.text(
                "Fixed `value()` to return 2.\n\n"
                + (
                    "The test passes: `Ran 1 test, OK`."
                    if "\nOK" in request.tool_results_text()
                    else "Tests fail."
                )
            ),
        ]
    )

    run = await world.run_turn(thread, status_ts=status_ts)

    # The result document and the exit code.
    assert run.exit_code == ExitCode.DONE
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    document = json.loads(run.document or "")
    assert document["answeredTs"] == thread.ts
    assert document["steps"] == 4
    assert document["tokens"]["output"] > 0
    assert document["costUSD"] > 0
    assert document["branch"] == "peerbot/" + thread.channel.lower() + "-" + thread.ts.replace(".", "-")
    world.claude.assert_script_done()

    # GitHub: the fix is committed on the thread's branch, and a draft pull request is open for it.
    branch = document["branch"]
    assert world.github.read_file(repository, branch, "app.py") == b"def value():\n    return 2\n"
    assert world.github.read_file(repository, "main", "app.py") == APP.encode()
    commit = world.github.commits(repository, branch)[0]
    assert commit.author_name == "Peerbot"
    assert "value()" in commit.message
    pulls = world.github.pull_requests(repository)
    assert len(pulls) == 1
    assert pulls[0].draft
    assert pulls[0].state == "open"
    assert pulls[0].head == branch
    assert document["pullRequest"].endswith(f"/pull/{pulls[0].number}")
    assert "Fixed `value()`" in (pulls[0].body or "")

    # Slack: the status message was edited in place to its final state; reactions tell the outcome.
    status = world.slack.message(thread.channel, status_ts)
    assert status.edit_count >= 3
    assert "Done" in status.text
    assert any("running" in version.text for version in status.history)
    request = world.slack.message(thread.channel, thread.ts)
    assert set(request.reactions) == {"white_check_mark"}
    answers = [m for m in bot_messages(world, thread.channel, thread.ts) if m.ts != status_ts]
    assert len(answers) == 1
    answer = answers[0]
    rendered = world.slack.render_thread(thread.channel, thread.ts)
    assert "Fixed `value()` to return 2." in rendered
    assert "Ran 1 test, OK" in rendered
    assert branch in rendered
    assert f"#{pulls[0].number}" in rendered
    assert " in · " in rendered
    assert " out" in rendered
    assert "💵" in rendered
    assert "⏱️" in rendered
    footer = json.dumps(answer.blocks)
    assert document["pullRequest"] in footer
    assert f"/tree/{branch}" in footer
    for message in bot_messages(world, thread.channel, thread.ts):
        assert check_message({"text": message.text, "blocks": list(message.blocks)}) == []
    assert GITHUB_TOKEN not in rendered

    # The session, read back from the GCS stand-in by another store: every step, answered, nothing pending.
    session = GcsSessionStore(gcs_bucket.name, client=gcs_standin.client()).load(thread.key)
    assert session is not None
    roles = [step.message.role for step in session.steps]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert session.answered_ts == thread.ts
    assert session.turns == 1
    assert session.resume is None
    assert session.repository == repository
    assert session.branch == branch
    assert "Ran 1 test" in json.dumps(session.steps[6].message.to_api())
    assert session.tokens.output == document["tokens"]["output"]

    # What Claude was told and how: system prompt with the repository, the tools, prompt caching.
    requests = world.claude.message_requests
    assert len(requests) == 4
    system = requests[0].system_text
    assert repository in system
    assert branch in system
    assert "str_replace_based_edit_tool" in system
    assert [tool["type"] for tool in requests[0].tools] == ["bash_20250124", "text_editor_20250728"]
    for recorded in requests:
        assert 3 <= len(recorded.cache_control_paths()) <= 4
    assert "This turn has about" in requests[0].messages[0]["content"][0]["text"]


async def test_a_follow_up_continues_the_session_and_the_same_pull_request(world: WorkerWorld) -> None:
    repository = world.seed_repository(world.slack.human, {"app.py": APP, "test_app.py": TEST})
    thread = world.new_thread("@peerbot add a docstring to app.py")
    first_app = world.root / "workspaces" / "turn-1" / "repo" / "app.py"
    world.claude.load(
        [
            Reply.insert(str(first_app), 0, '"""The app."""'),
            Reply.text("Added a module docstring."),
        ]
    )
    first = await world.run_turn(thread)
    assert first.result is not None
    assert first.result.outcome is Outcome.DONE

    reply_ts = world.reply(thread, "thanks! now make value() return 2")
    second_app = world.root / "workspaces" / "turn-2" / "repo" / "app.py"
    world.claude.load(
        [
            Reply.str_replace(str(second_app), "return 1", "return 2"),
            Reply.text("Done: value() returns 2."),
        ]
    )
    second = await world.run_turn(thread, requested_ts=reply_ts, answered_ts=thread.ts, turn=2)
    assert second.result is not None
    assert second.result.outcome is Outcome.DONE
    assert second.result.answered_ts == reply_ts

    branch = second.result.branch
    assert branch is not None
    content = world.github.read_file(repository, branch, "app.py").decode()
    assert content.startswith('"""The app."""')
    assert "return 2" in content
    assert len(world.github.pull_requests(repository)) == 1
    assert "value() returns 2" in (world.github.pull_requests(repository)[0].body or "")

    # The second turn's first request carried the whole earlier turn, and a cache breakpoint at its end.
    request = world.claude.message_requests[2]
    texts = json.dumps(request.messages)
    assert "add a docstring" in texts
    assert "Added a module docstring." in texts
    assert "make value() return 2" in texts
    assert "thanks! now make value() return 2" in request.messages[-1]["content"][-1]["text"]
    assert any(path.startswith("messages.3.") for path in request.cache_control_paths())  # the answer
    session = world.store.load(thread.key)
    assert session is not None
    assert session.turns == 2
    assert session.answered_ts == reply_ts
    # Without a status message from the dispatcher, the worker posted its own and edited that.
    answers = [m.text for m in bot_messages(world, thread.channel, thread.ts)]
    assert sum("Done: value() returns 2." in text for text in answers) == 1


async def test_nothing_new_to_answer_is_a_quiet_success(world: WorkerWorld) -> None:
    world.seed_repository(world.slack.human, {"app.py": APP})
    thread = world.new_thread("@peerbot hello")
    world.claude.load([Reply.text("Hello! What shall I do?")])
    first = await world.run_turn(thread)
    assert first.result is not None
    assert first.result.outcome is Outcome.DONE
    again = await world.run_turn(thread, answered_ts=thread.ts)
    assert again.exit_code == ExitCode.DONE
    assert again.result is not None
    assert again.result.answered_ts == thread.ts
    assert len(world.claude.message_requests) == 1


async def test_a_history_over_the_token_budget_is_summarised_by_the_cheaper_model(world: WorkerWorld) -> None:
    world.seed_repository(world.slack.human, {"app.py": APP, "big.txt": "lorem ipsum " * 400})
    thread = world.new_thread("@peerbot summarise big.txt twice")
    world.claude.load(
        [
            Reply.bash("cat big.txt"),
            lambda request: (
                Reply.text("summary: the person asked about big.txt")
                if not request.body.get("tools")
                else Reply.bash("wc -c big.txt")
            ),
            lambda request: (
                Reply.text("summary: big.txt was read and measured")
                if not request.body.get("tools")
                else Reply.text("big.txt is lorem ipsum, 4,800 bytes.")
            ),
            Reply.text("big.txt is lorem ipsum, 4,800 bytes."),
        ]
    )
    run = await world.run_turn(thread, settings={"session_token_budget": 1000})
    assert run.result is not None, run.document
    assert run.result.outcome is Outcome.DONE, run.document
    summaries = [r for r in world.claude.message_requests if not r.body.get("tools")]
    assert summaries
    assert all(r.body["model"] == "claude-haiku-4-5" for r in summaries)
    assert "summarise big.txt twice" in json.dumps(summaries[0].messages)
    later = [r for r in world.claude.message_requests if r.body.get("tools")][-1]
    assert later.messages[0]["content"][0]["text"].startswith("[Peerbot] Earlier parts of this thread")
    session = world.store.load(thread.key)
    assert session is not None
    assert session.summary is not None
    assert session.first_seq > 0
    assert session.answered_ts == thread.ts
    assert "lorem ipsum" in world.slack.render_thread(thread.channel, thread.ts)
