"""Worker turns with the local repository host (``REPOSITORY_HOST=local``): no GitHub, no token.

Whole turns against the Slack and Claude stand-ins, with the user's repository a bare git repository in a
folder: created with one commit on first use, the thread's branch pushed into it, a pull request record
written next to it and kept current by the next turn, and the thread showing where both are. A thread that
names a repository works in that bare repository, or is told clearly that there is none. GitHub (its
stand-in is running) is never asked anything.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from peerbot.naming import user_repository_name
from peerbot.result import ErrorKind, ExitCode, Outcome
from peerbot.slack_messages import check_message
from peerbot.testing.claude import Reply
from peerbot.testing.worker import ORGANIZATION, Thread, TurnRun, WorkerWorld
from peerbot.worker.errors import RepositoryFailure
from peerbot.worker.local_host import LocalHost
from peerbot.worker.redaction import Redactor
from peerbot.worker.repository import BODY_LIMIT, Git, RepoInfo


@pytest.fixture
def world(tmp_path: Path) -> Iterator[WorkerWorld]:
    with WorkerWorld(tmp_path) as world:
        yield world


def git(*args: str, cwd: Path) -> str:
    """Plain git as a person runs it (no configuration but an identity)."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Person",
        "GIT_AUTHOR_EMAIL": "person@example.com",
        "GIT_COMMITTER_NAME": "Person",
        "GIT_COMMITTER_EMAIL": "person@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def bot_messages(world: WorkerWorld, thread: Thread) -> list[Any]:
    return [m for m in world.slack.thread(thread.channel, thread.ts) if m.user == world.slack.bot_user_id]


async def local_turn(world: WorkerWorld, thread: Thread, repositories: Path, **pointers: Any) -> TurnRun:
    # No GitHub token at all: the local host needs none.
    settings = {"repository_host": "local", "repositories_dir": repositories, "github_token": ""}
    return await world.run_turn(thread, settings=settings, **pointers)


async def test_a_turn_works_in_a_new_local_repository_and_a_follow_up_updates_its_pull_request(
    world: WorkerWorld, tmp_path: Path
) -> None:
    repositories = tmp_path / "repositories"
    thread = world.new_thread("@peerbot write a note")
    status_ts = world.post_status_message(thread)
    world.claude.load([Reply.bash("echo 'hello' > notes.txt"), Reply.text("Wrote notes.txt.")])

    run = await local_turn(world, thread, repositories, status_ts=status_ts)

    assert run.exit_code == ExitCode.DONE, run.document
    assert run.result is not None
    assert run.result.outcome is Outcome.DONE
    branch = run.result.branch
    assert branch is not None
    # The user's repository: created bare, with GitHub's name, its first commit on main, the branch pushed.
    bare = repositories / ORGANIZATION / f"{user_repository_name(thread.user)}.git"
    assert git("rev-parse", "--is-bare-repository", cwd=bare).strip() == "true"
    assert "README.md" in git("ls-tree", "--name-only", "main", cwd=bare)
    assert git("show", f"{branch}:notes.txt", cwd=bare) == "hello\n"
    assert "Peerbot" in git("log", "-1", "--format=%an %s", branch, cwd=bare)
    # The pull request: a record and a page next to the repository; the page's path is its "URL".
    pulls = repositories / ORGANIZATION / f"{user_repository_name(thread.user)}.pulls"
    page = pulls / "1.md"
    assert run.result.pull_request == str(page)
    record = json.loads((pulls / "1.json").read_text())
    assert (record["head"], record["base"]) == (branch, "main")
    assert (record["state"], record["draft"]) == ("open", True)
    assert record["title"] == "write a note"
    assert "Wrote notes.txt." in record["body"]
    assert "Wrote notes.txt." in page.read_text()
    assert f"git clone --branch {branch} {bare}" in page.read_text()
    # Slack: the answer, with the branch and the pull request shown with their paths (Slack links only
    # web addresses, so the path is in the text).
    rendered = world.slack.render_thread(thread.channel, thread.ts)
    assert "Wrote notes.txt." in rendered
    assert f"{branch} ({bare})" in rendered
    assert f"#1 ({page})" in rendered
    assert "opening your repository locally" in " ".join(
        version.text for version in world.slack.message(thread.channel, status_ts).history
    )
    for message in bot_messages(world, thread):
        assert check_message({"text": message.text, "blocks": list(message.blocks)}) == []
    # GitHub was never asked.
    assert world.github.repositories() == []

    reply_ts = world.reply(thread, "now add a second line")
    world.claude.load([Reply.bash("echo 'again' >> notes.txt"), Reply.text("Added a second line.")])
    second = await local_turn(
        world, thread, repositories, requested_ts=reply_ts, answered_ts=thread.ts, turn=2
    )
    assert second.result is not None
    assert second.result.outcome is Outcome.DONE
    assert git("show", f"{branch}:notes.txt", cwd=bare) == "hello\nagain\n"
    assert second.result.pull_request == str(page)  # the same pull request, its description current
    assert sorted(path.name for path in pulls.glob("*.json")) == ["1.json"]
    record = json.loads((pulls / "1.json").read_text())
    assert "Added a second line." in record["body"]
    assert record["title"] == "write a note"
    assert "Added a second line." in page.read_text()


async def test_a_thread_naming_a_local_repository_works_in_it(world: WorkerWorld, tmp_path: Path) -> None:
    repositories = tmp_path / "repositories"
    bare = repositories / "acme" / "widgets.git"
    bare.parent.mkdir(parents=True)
    git("init", "-q", "--bare", "--initial-branch=trunk", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    git("clone", "-q", str(bare), str(seed), cwd=tmp_path)
    (seed / "app.py").write_text("x = 1\n")
    git("add", "-A", cwd=seed)
    git("commit", "-q", "-m", "Seed", cwd=seed)
    git("push", "-q", "origin", "HEAD:trunk", cwd=seed)

    thread = world.new_thread("@peerbot repo=acme/widgets add y")
    world.claude.load([Reply.bash("echo 'y = 2' >> app.py"), Reply.text("Added y.")])
    run = await local_turn(world, thread, repositories)

    assert run.result is not None
    assert run.result.outcome is Outcome.DONE, run.document
    branch = run.result.branch
    assert branch is not None
    assert git("show", f"{branch}:app.py", cwd=bare) == "x = 1\ny = 2\n"
    record = json.loads((repositories / "acme" / "widgets.pulls" / "1.json").read_text())
    assert (record["repository"], record["base"]) == ("acme/widgets", "trunk")
    assert "acme/widgets" in world.claude.message_requests[0].system_text
    # Nothing else was created: no repository of the user's own.
    assert sorted(path.name for path in repositories.iterdir()) == ["acme"]


async def test_a_named_local_repository_that_does_not_exist_is_explained(
    world: WorkerWorld, tmp_path: Path
) -> None:
    repositories = tmp_path / "repositories"
    thread = world.new_thread("@peerbot repo=acme/missing add y")

    run = await local_turn(world, thread, repositories)

    assert run.exit_code == ExitCode.FAILED
    assert run.result is not None
    assert run.result.outcome is Outcome.FAILED
    assert run.result.error is not None
    assert run.result.error.kind is ErrorKind.REPOSITORY
    rendered = world.slack.render_thread(thread.channel, thread.ts)
    missing = repositories / "acme" / "missing.git"
    assert f"I can't find the local repository `acme/missing`: there is no `{missing}`." in rendered
    assert f"git init --bare {missing}" in rendered
    assert not missing.exists()
    assert world.claude.message_requests == []  # nothing was asked of Claude


# --- the host on its own ------------------------------------------------------------------------------------

USER = "U0123ABCD"
BRANCH = "peerbot/c0123-1700000000-000100"


def host_in(root: Path) -> LocalHost:
    return LocalHost(root, ORGANIZATION, env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(root)})


def push_branch(info: RepoInfo, branch: str, work: Path) -> None:
    git("clone", "-q", info.clone_url, str(work), cwd=work.parent)
    (work / "change.txt").write_text(branch)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "Change", cwd=work)
    git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)


def test_workers_racing_to_create_the_users_repository_make_exactly_one(tmp_path: Path) -> None:
    host = host_in(tmp_path / "repositories")
    with ThreadPoolExecutor(max_workers=4) as pool:
        infos = list(pool.map(lambda _: host.resolve(None, USER, BRANCH), range(4)))
    assert sum(info.created for info in infos) == 1
    assert {info.full_name for info in infos} == {f"{ORGANIZATION}/{user_repository_name(USER)}"}
    assert all((info.default_branch, info.empty, info.private) == ("main", False, True) for info in infos)
    folder = tmp_path / "repositories" / ORGANIZATION
    assert [path.name for path in folder.iterdir()] == [f"{user_repository_name(USER)}.git"]  # no leftovers
    again = host.resolve(None, USER, BRANCH)
    assert not again.created
    assert not again.branch_exists


def test_pull_requests_are_one_per_branch_numbered_per_repository_and_need_both_branches(
    tmp_path: Path,
) -> None:
    host = host_in(tmp_path / "repositories")
    info = host.resolve(None, USER, BRANCH)
    # Like GitHub's 422: no pull request from a branch that was never pushed; nothing is written.
    with pytest.raises(RepositoryFailure) as refused:
        host.ensure_pull_request(info, BRANCH, title="t", body="b")
    assert refused.value.kind is ErrorKind.REPOSITORY
    assert f"no branch `{BRANCH}`" in refused.value.what_happened
    assert host.pull_requests(info.full_name) == []

    branches = [f"{BRANCH}-{n}" for n in range(4)]
    for n, branch in enumerate(branches):
        push_branch(info, branch, tmp_path / f"work-{n}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        opened = list(pool.map(lambda b: host.ensure_pull_request(info, b, title=b, body="first"), branches))
    assert sorted(pull.number for pull in opened) == [1, 2, 3, 4]
    assert all(pull.created for pull in opened)

    again = host.ensure_pull_request(info, branches[0], title="another title", body="x" * (BODY_LIMIT + 10))
    first = next(pull for pull in opened if pull.url == again.url)
    assert (again.number, again.created) == (first.number, False)
    record = next(r for r in host.pull_requests(info.full_name) if r["number"] == again.number)
    assert record["title"] == branches[0]  # kept, as GitHub's pull request keeps its title
    assert len(record["body"]) == BODY_LIMIT
    assert record["createdAt"] <= record["updatedAt"]


@pytest.mark.parametrize("name", ["acme/.hidden", "../escape", "acme/a/b", "acme/"])
def test_a_name_that_is_not_a_repository_name_is_refused(tmp_path: Path, name: str) -> None:
    host = host_in(tmp_path / "repositories")
    with pytest.raises(RepositoryFailure) as refused:
        host.resolve(name, USER, BRANCH)
    assert refused.value.kind is ErrorKind.INPUT
    assert "repo=owner/name" in refused.value.what_to_do
    assert not (tmp_path / "repositories").exists() or not any((tmp_path / "repositories").iterdir())


def test_a_folder_that_is_not_a_bare_repository_is_explained(tmp_path: Path) -> None:
    root = tmp_path / "repositories"
    (root / "acme" / "plain.git").mkdir(parents=True)
    (root / "acme" / "plain.git" / "README").write_text("not a repository")
    with pytest.raises(RepositoryFailure) as refused:
        host_in(root).resolve("acme/plain.git", USER, BRANCH)
    assert refused.value.kind is ErrorKind.REPOSITORY
    assert "is not a bare git repository" in refused.value.what_happened
    assert "git clone --bare" in refused.value.what_to_do


async def test_git_without_a_token_sets_up_no_credentials(tmp_path: Path) -> None:
    """With no token there is nothing to hand over: no helper, no token variable (a fake git shows both)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text('#!/bin/sh\necho "args: $*"\necho "token: ${PEERBOT_GIT_TOKEN:-none}"\n')
    (fake / "git").chmod(0o755)
    env = {"PATH": str(fake), "HOME": str(tmp_path)}
    url = "https://github.com/acme/widgets.git"
    without = await Git(env=env, redact=Redactor([])).run("push", cwd=tmp_path, token_for=url)
    assert "credential" not in without
    assert "token: none" in without
    token = "ghp_a_real_looking_token_0000000000000000"
    with_token = await Git(env=env, token=token, redact=Redactor([token])).run(
        "push", cwd=tmp_path, token_for=url
    )
    assert "credential.https://github.com.helper=" in with_token
    assert "token: [REDACTED]" in with_token
