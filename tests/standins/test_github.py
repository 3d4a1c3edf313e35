"""The GitHub stand-in against the real PyGithub and the real git CLI, and as strict as GitHub.

Each strict point (an error GitHub gives, a request GitHub refuses) has a test that would fail if the
stand-in let it through.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import pytest
from github import (
    Auth,
    BadCredentialsException,
    Github,
    GithubException,
    GithubRetry,
    RateLimitExceededException,
    UnknownObjectException,
)

from peerbot.testing.github import Access, Fault, GitHubStandIn, TokenGrant
from tests.fixtures.github import (
    GITHUB_ORGANIZATION,
    GITHUB_OUTSIDER_TOKEN,
    GITHUB_WRITER_LOGIN,
    GITHUB_WRITER_TOKEN,
)

REPO = f"{GITHUB_ORGANIZATION}/peerbot-u01abc"


def _clone_with_branch(github_standin, github_git, tmp_path: Path, branch: str = "feature") -> Path:
    """Clone REPO, commit one file on ``branch`` and push it with the writer token."""
    work = tmp_path / "work"
    github_git("clone", github_standin.clone_url(REPO), str(work), token=GITHUB_WRITER_TOKEN)
    github_git("switch", "-c", branch, cwd=work)
    (work / "hello.txt").write_text("hello\nworld\n")
    github_git("add", "hello.txt", cwd=work)
    github_git("commit", "-m", "Add hello", cwd=work)
    github_git("push", "origin", branch, cwd=work, token=GITHUB_WRITER_TOKEN)
    return work


# --- Repositories ---------------------------------------------------------------------------------------


def test_create_private_repository_in_org_and_get_it(github_standin, github_client):
    client = github_client()
    created = client.get_organization(GITHUB_ORGANIZATION).create_repo(
        "peerbot-u01abc", private=True, auto_init=True
    )
    assert created.full_name == REPO
    assert created.private is True
    assert created.default_branch == "main"
    assert created.clone_url == github_standin.clone_url(REPO)

    fetched = client.get_repo(REPO)
    assert fetched.id == created.id
    assert fetched.owner.login == GITHUB_ORGANIZATION
    assert fetched.owner.type == "Organization"
    assert fetched.permissions.push is True
    # auto_init made a real commit with a README on main.
    assert github_standin.read_file(REPO, "main", "README.md") == b"# peerbot-u01abc\n"
    assert [commit.message for commit in github_standin.commits(REPO)] == ["Initial commit\n"]
    assert fetched.get_branch("main").commit.sha == github_standin.branches(REPO)["main"]


def test_repository_is_public_unless_asked_private(github_client):
    """GitHub's default for ``private`` is false: Peerbot must ask for a private repository explicitly."""
    org = github_client().get_organization(GITHUB_ORGANIZATION)
    assert org.create_repo("open-by-default").private is False
    assert org.create_repo("closed", visibility="private").private is True


def test_duplicate_repository_name_is_422_with_githubs_body(github_standin, github_client):
    org = github_client().get_organization(GITHUB_ORGANIZATION)
    org.create_repo("peerbot-u01abc", private=True)
    with pytest.raises(GithubException) as caught:
        org.create_repo("PEERBOT-U01ABC", private=True)  # names are case-insensitive on GitHub
    assert caught.value.status == 422
    assert caught.value.data["message"] == "Repository creation failed."
    assert caught.value.data["errors"] == [
        {
            "resource": "Repository",
            "code": "custom",
            "field": "name",
            "message": "name already exists on this account",
        }
    ]
    assert caught.value.data["documentation_url"].startswith("https://docs.github.com/")
    assert len(github_standin.repositories()) == 1


def test_user_repository_and_user_lookups(github_client):
    client = github_client()
    repo = client.get_user().create_repo("scratch", private=True)
    assert repo.full_name == f"{GITHUB_WRITER_LOGIN}/scratch"
    assert client.get_user(GITHUB_WRITER_LOGIN).type == "User"
    assert client.get_user(GITHUB_ORGANIZATION).type == "Organization"
    with pytest.raises(UnknownObjectException):
        client.get_organization(GITHUB_WRITER_LOGIN)  # a user is not an organisation
    with pytest.raises(UnknownObjectException):
        client.get_user("nobody-here")


def test_unknown_repository_is_404(github_client):
    with pytest.raises(UnknownObjectException) as caught:
        github_client().get_repo(f"{GITHUB_ORGANIZATION}/does-not-exist")
    assert caught.value.status == 404
    assert caught.value.data["message"] == "Not Found"


def test_wrong_token_is_401_bad_credentials(github_client):
    with pytest.raises(BadCredentialsException) as caught:
        github_client("ghp_not_a_token").get_user().login  # noqa: B018 - the attribute access sends GET /user
    assert caught.value.status == 401
    assert caught.value.data["message"] == "Bad credentials"
    # Even a public resource refuses a bad token rather than treating it as anonymous.
    with pytest.raises(BadCredentialsException):
        github_client("ghp_not_a_token").get_organization(GITHUB_ORGANIZATION)


def test_anonymous_user_endpoint_needs_authentication(github_client):
    with pytest.raises(GithubException) as caught:
        github_client(None).get_user().login  # noqa: B018
    assert caught.value.status == 401
    assert caught.value.data["message"] == "Requires authentication"


def test_private_repository_is_invisible_to_other_tokens(github_standin, github_client):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    github_standin.create_repository(f"{GITHUB_ORGANIZATION}/public-one", private=False)
    outsider = github_client(GITHUB_OUTSIDER_TOKEN)
    with pytest.raises(UnknownObjectException):  # 404, not 403: GitHub does not reveal it exists
        outsider.get_repo(REPO)
    with pytest.raises(UnknownObjectException):
        github_client(None).get_repo(REPO)
    assert outsider.get_repo(f"{GITHUB_ORGANIZATION}/public-one").private is False
    assert github_client().get_repo(REPO).private is True


def test_outsider_cannot_create_repositories_in_the_org(github_client):
    with pytest.raises(GithubException) as caught:
        github_client(GITHUB_OUTSIDER_TOKEN).get_organization(GITHUB_ORGANIZATION).create_repo("sneaky")
    assert caught.value.status == 403
    assert caught.value.data["message"].startswith("You need admin access to the organization")


def test_enterprise_base_url_works_and_links_keep_the_prefix(github_standin, github_client):
    client = github_client(enterprise=True)
    repo = client.get_organization(GITHUB_ORGANIZATION).create_repo("ghe", private=True, auto_init=True)
    assert repo.url.startswith(github_standin.url + "/api/v3/repos/")
    assert [branch.name for branch in repo.get_branches()] == ["main"]
    assert all(record.path.startswith("/api/v3/") for record in github_standin.requests())


def test_branch_listing_is_paginated_like_github(github_standin, github_client):
    info = github_standin.create_repository(REPO, auto_init=True)
    main = github_standin.branches(REPO)["main"]
    for name in ("a", "b", "c/with-slash"):
        github_standin._git(info.path, "update-ref", f"refs/heads/{name}", main)
    repo = github_client(per_page=2).get_repo(REPO)
    assert sorted(branch.name for branch in repo.get_branches()) == ["a", "b", "c/with-slash", "main"]
    assert any("page=2" in record.query for record in github_standin.requests())
    assert repo.get_branch("c/with-slash").commit.sha == main
    with pytest.raises(UnknownObjectException) as caught:
        repo.get_branch("missing")
    assert caught.value.data["message"] == "Branch not found"


# --- Requests GitHub refuses ----------------------------------------------------------------------------


def _send(standin: GitHubStandIn, method: str, path: str, body: bytes | None, headers: dict[str, str]):
    """One request with exactly these headers (urllib and PyGithub would add their own)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(standin.url.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _raw(standin: GitHubStandIn, method: str, path: str, body: bytes | None, headers: dict[str, str]):
    status, _, data = _send(standin, method, path, body, headers)
    return status, json.loads(data)


def test_request_without_user_agent_is_403(github_standin):
    status, body = _raw(github_standin, "GET", f"/orgs/{GITHUB_ORGANIZATION}", None, {})
    assert status == 403
    assert "User-Agent" in body["message"]


def test_malformed_json_is_400_and_wrong_types_are_422(github_standin):
    headers = {"User-Agent": "test", "Authorization": f"token {GITHUB_WRITER_TOKEN}"}
    path = f"/orgs/{GITHUB_ORGANIZATION}/repos"
    status, body = _raw(github_standin, "POST", path, b"{not json", headers)
    assert (status, body["message"]) == (400, "Problems parsing JSON")
    status, body = _raw(
        github_standin, "POST", path, json.dumps({"name": "x", "private": "yes"}).encode(), headers
    )
    assert status == 422
    assert "is not a boolean" in body["message"]
    assert github_standin.repositories() == []


# --- Git over HTTP --------------------------------------------------------------------------------------


def test_clone_commit_push_with_credential_helper(github_standin, github_git, tmp_path):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    _clone_with_branch(github_standin, github_git, tmp_path)
    branches = github_standin.branches(REPO)
    assert set(branches) == {"main", "feature"}
    [tip, initial] = github_standin.commits(REPO, "feature")
    assert tip.message == "Add hello\n"
    assert tip.author_email == "peerbot-test@example.com"
    assert tip.parents == (initial.sha,)
    assert github_standin.read_file(REPO, "feature", "hello.txt") == b"hello\nworld\n"
    # git first asked without credentials, got a 401 challenge, then came back with the helper's token.
    git_requests = [record for record in github_standin.requests() if record.kind == "git"]
    assert git_requests[0].status == 401
    assert {record.login for record in git_requests if record.status == 200} == {GITHUB_WRITER_LOGIN}


def test_clone_of_private_repository_without_credentials_fails(github_standin, github_git, tmp_path):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    result = github_git("clone", github_standin.clone_url(REPO), str(tmp_path / "nope"), check=False)
    assert result.returncode != 0
    assert "terminal prompts disabled" in result.stderr or "Authentication failed" in result.stderr
    [record] = github_standin.requests()
    assert record.status == 401


def test_clone_with_a_token_that_cannot_see_the_repository_fails(github_standin, github_git, tmp_path):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    result = github_git(
        "clone", github_standin.clone_url(REPO), str(tmp_path / "x"), token=GITHUB_OUTSIDER_TOKEN, check=False
    )
    assert result.returncode != 0
    assert [record.status for record in github_standin.requests()] == [401, 404]


def test_push_needs_write_access(github_standin, github_git, tmp_path):
    github_standin.create_repository(REPO, private=False, auto_init=True)
    reader = "ghp_standin_reader"
    github_standin.add_token(TokenGrant(reader, "reader", repositories={REPO: Access.READ}))
    work = tmp_path / "work"
    github_git("clone", github_standin.clone_url(REPO), str(work))  # public: anonymous clone works
    github_git("commit", "--allow-empty", "-m", "nope", cwd=work)
    anonymous = github_git("push", "origin", "main", cwd=work, check=False)
    assert anonymous.returncode != 0
    read_only = github_git("push", "origin", "main", cwd=work, token=reader, check=False)
    assert read_only.returncode != 0
    assert "403" in read_only.stderr
    assert github_standin.commits(REPO)[0].message == "Initial commit\n"  # nothing was pushed
    github_git("push", "origin", "main", cwd=work, token=GITHUB_WRITER_TOKEN)
    assert github_standin.commits(REPO)[0].message == "nope\n"


def test_shallow_clone_over_protocol_v2(github_standin, github_git, tmp_path):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    _clone_with_branch(github_standin, github_git, tmp_path)
    github_git(
        "-c", "protocol.version=2", "clone", "--depth", "1", "--branch", "feature",
        github_standin.clone_url(REPO), str(tmp_path / "shallow"), token=GITHUB_WRITER_TOKEN,
    )  # fmt: skip
    log = github_git("log", "--oneline", cwd=tmp_path / "shallow").stdout.splitlines()
    assert len(log) == 1
    assert (tmp_path / "shallow" / ".git" / "shallow").exists()


def test_info_refs_speaks_protocol_v2_when_asked(github_standin):
    github_standin.create_repository(f"{GITHUB_ORGANIZATION}/public-one", private=False, auto_init=True)
    path = f"/{GITHUB_ORGANIZATION}/public-one.git/info/refs?service=git-upload-pack"
    status, headers, body = _send(github_standin, "GET", path, None, {"Git-Protocol": "version=2"})
    assert status == 200
    assert headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
    assert b"version 2" in body


def test_dumb_http_and_missing_repositories_are_refused(github_standin):
    github_standin.create_repository(f"{GITHUB_ORGANIZATION}/public-one", private=False)
    status, _, _ = _send(github_standin, "GET", f"/{GITHUB_ORGANIZATION}/public-one.git/info/refs", None, {})
    assert status == 403  # GitHub serves only the smart protocol
    missing = f"/{GITHUB_ORGANIZATION}/nothing.git/info/refs?service=git-upload-pack"
    status, headers, _ = _send(github_standin, "GET", missing, None, {})
    assert status == 401  # anonymous: a challenge, not a hint whether it exists
    assert headers["WWW-Authenticate"] == 'Basic realm="GitHub"'


# --- Pull requests --------------------------------------------------------------------------------------


def test_draft_pull_request_create_list_update(github_standin, github_client, github_git, tmp_path):
    github_standin.create_repository(REPO, private=True, auto_init=True)
    work = _clone_with_branch(github_standin, github_git, tmp_path)
    repo = github_client().get_repo(REPO)

    pull = repo.create_pull(base="main", head="feature", title="Add hello", body="First try", draft=True)
    assert (pull.number, pull.draft, pull.state) == (1, True, "open")
    assert pull.head.ref == "feature"
    assert pull.head.label == f"{GITHUB_ORGANIZATION}:feature"
    assert (pull.commits, pull.additions, pull.deletions, pull.changed_files) == (1, 2, 0, 1)
    assert pull.html_url.endswith(f"/{REPO}/pull/1")
    assert pull.user.login == GITHUB_WRITER_LOGIN

    listed = repo.get_pulls(state="open", head=f"{GITHUB_ORGANIZATION}:feature", base="main")
    assert [item.number for item in listed] == [1]
    assert list(repo.get_pulls(state="closed")) == []

    # The pull request follows the branch: push another commit and it counts two.
    (work / "more.txt").write_text("more\n")
    github_git("add", "more.txt", cwd=work)
    github_git("commit", "-m", "More", cwd=work)
    github_git("push", "origin", "feature", cwd=work, token=GITHUB_WRITER_TOKEN)
    assert repo.get_pull(1).commits == 2
    assert repo.get_pull(1).head.sha == github_standin.branches(REPO)["feature"]

    pull.edit(title="Add hello (v2)", body="Second try")
    pull.edit(state="closed")
    [info] = github_standin.pull_requests(REPO)
    assert (info.title, info.body, info.state, info.draft) == ("Add hello (v2)", "Second try", "closed", True)
    assert info.closed_at is not None
    assert [item.number for item in repo.get_pulls(state="all")] == [1]


def test_list_filter_on_a_bare_branch_name_is_ignored_as_on_github(
    github_standin, github_client, github_git, tmp_path
):
    """GitHub only filters ``head`` given as ``owner:branch``; a bare name silently matches everything."""
    github_standin.create_repository(REPO, auto_init=True)
    work = _clone_with_branch(github_standin, github_git, tmp_path, branch="one")
    github_git("switch", "-c", "two", "main", cwd=work)
    github_git("commit", "--allow-empty", "-m", "two", cwd=work)
    github_git("push", "origin", "two", cwd=work, token=GITHUB_WRITER_TOKEN)
    repo = github_client().get_repo(REPO)
    repo.create_pull(base="main", head="one", title="one")
    repo.create_pull(base="main", head=f"{GITHUB_ORGANIZATION}:two", title="two")
    assert sorted(pull.title for pull in repo.get_pulls(head="one")) == ["one", "two"]
    assert [pull.title for pull in repo.get_pulls(head=f"{GITHUB_ORGANIZATION}:one")] == ["one"]


def test_pull_request_without_commits_ahead_is_422(github_standin, github_client, github_git, tmp_path):
    github_standin.create_repository(REPO, auto_init=True)
    work = tmp_path / "work"
    github_git("clone", github_standin.clone_url(REPO), str(work), token=GITHUB_WRITER_TOKEN)
    github_git("push", "origin", "main:empty", cwd=work, token=GITHUB_WRITER_TOKEN)
    with pytest.raises(GithubException) as caught:
        github_client().get_repo(REPO).create_pull(base="main", head="empty", title="nothing")
    assert caught.value.status == 422
    assert caught.value.data["message"] == "Validation Failed"
    assert caught.value.data["errors"] == [
        {"resource": "PullRequest", "code": "custom", "message": "No commits between main and empty"}
    ]
    assert github_standin.pull_requests() == []


def test_second_pull_request_for_the_same_head_is_422(github_standin, github_client, github_git, tmp_path):
    github_standin.create_repository(REPO, auto_init=True)
    _clone_with_branch(github_standin, github_git, tmp_path)
    repo = github_client().get_repo(REPO)
    repo.create_pull(base="main", head="feature", title="first")
    with pytest.raises(GithubException) as caught:
        repo.create_pull(base="main", head="feature", title="second")
    assert caught.value.status == 422
    [error] = caught.value.data["errors"]
    assert error["message"] == f"A pull request already exists for {GITHUB_ORGANIZATION}:feature."


def test_pull_request_from_a_missing_branch_is_422(github_standin, github_client):
    github_standin.create_repository(REPO, auto_init=True)
    with pytest.raises(GithubException) as caught:
        github_client().get_repo(REPO).create_pull(base="main", head="nowhere", title="x")
    assert caught.value.status == 422
    assert caught.value.data["errors"] == [{"resource": "PullRequest", "field": "head", "code": "invalid"}]


def test_editing_someone_elses_pull_request_needs_write_access(
    github_standin, github_client, github_git, tmp_path
):
    github_standin.create_repository(REPO, private=False, auto_init=True)
    _clone_with_branch(github_standin, github_git, tmp_path)
    github_client().get_repo(REPO).create_pull(base="main", head="feature", title="mine")
    others_view = github_client(GITHUB_OUTSIDER_TOKEN).get_repo(REPO).get_pull(1)  # public: readable
    with pytest.raises(GithubException) as caught:
        others_view.edit(state="closed")
    assert caught.value.status == 403
    assert github_standin.pull_requests(REPO)[0].state == "open"


def test_outsider_cannot_see_pull_requests_of_a_private_repository(github_standin, github_client):
    github_standin.create_repository(REPO, auto_init=True)
    with pytest.raises(UnknownObjectException):
        list(github_client(GITHUB_OUTSIDER_TOKEN).get_repo(REPO).get_pulls())


# --- Rate limits and faults -----------------------------------------------------------------------------


def test_responses_carry_githubs_headers(github_standin, github_client):
    client = github_client()
    client.get_organization(GITHUB_ORGANIZATION)
    remaining, limit = client.rate_limiting
    assert (remaining, limit) == (4999, 5000)
    assert client.rate_limiting_resettime > 0
    overview = client.get_rate_limit()
    assert overview.resources.core.remaining == 4999  # asking for the rate limit costs nothing


def test_primary_rate_limit_is_counted():
    grant = TokenGrant("ghp_tiny", "tiny")
    with GitHubStandIn(organizations=[GITHUB_ORGANIZATION], tokens=[grant], rate_limit=2) as standin:
        client = Github(base_url=standin.api_url, auth=Auth.Token("ghp_tiny"), retry=None)
        try:
            client.get_organization(GITHUB_ORGANIZATION)
            client.get_organization(GITHUB_ORGANIZATION)
            with pytest.raises(RateLimitExceededException) as caught:
                client.get_organization(GITHUB_ORGANIZATION)
        finally:
            client.close()
    assert caught.value.headers is not None
    assert caught.value.headers["x-ratelimit-remaining"] == "0"
    assert caught.value.data["message"].startswith("API rate limit exceeded for user ID ")


@pytest.mark.parametrize(("fault", "status"), [(Fault.BAD_GATEWAY, 502), (Fault.SERVICE_UNAVAILABLE, 503)])
def test_injected_server_errors(github_standin, github_client, fault, status):
    github_standin.inject_fault(fault)
    client = github_client()
    with pytest.raises(GithubException) as caught:
        client.get_organization(GITHUB_ORGANIZATION)
    assert caught.value.status == status
    assert github_standin.pending_faults() == 0
    assert client.get_organization(GITHUB_ORGANIZATION).login == GITHUB_ORGANIZATION  # only the next one


def test_injected_primary_rate_limit(github_standin, github_client):
    github_standin.inject_fault(Fault.PRIMARY_RATE_LIMIT)
    with pytest.raises(RateLimitExceededException) as caught:
        github_client().get_organization(GITHUB_ORGANIZATION)
    assert caught.value.status == 403
    assert caught.value.headers is not None
    assert caught.value.headers["x-ratelimit-remaining"] == "0"
    assert int(caught.value.headers["x-ratelimit-reset"]) > 0
    assert caught.value.data["message"].startswith("API rate limit exceeded for user ID ")


def test_injected_secondary_rate_limit(github_standin, github_client):
    github_standin.inject_fault(Fault.SECONDARY_RATE_LIMIT)
    with pytest.raises(RateLimitExceededException) as caught:
        github_client().get_organization(GITHUB_ORGANIZATION)
    assert caught.value.headers is not None
    assert caught.value.headers["retry-after"] == "60"
    assert caught.value.data["message"].startswith("You have exceeded a secondary rate limit")


def test_faults_match_a_path_prefix_and_count(github_standin, github_client, github_git, tmp_path):
    github_standin.create_repository(REPO, auto_init=True)
    github_standin.inject_fault(Fault.BAD_GATEWAY, count=2, path_prefix=f"/repos/{REPO}/pulls")
    client = github_client()
    assert client.get_organization(GITHUB_ORGANIZATION).login == GITHUB_ORGANIZATION  # not matched
    repo = client.get_repo(REPO)
    for _ in range(2):
        with pytest.raises(GithubException) as caught:
            list(repo.get_pulls())
        assert caught.value.status == 502
    assert list(repo.get_pulls()) == []
    # 5xx faults reach git too; git gives up on a 502.
    github_standin.inject_fault(Fault.BAD_GATEWAY, path_prefix=f"/{REPO}.git")
    result = github_git("clone", github_standin.clone_url(REPO), str(tmp_path / "x"), check=False)
    assert result.returncode != 0
    assert "502" in result.stderr


def test_pygithub_retries_recover_from_one_bad_gateway(github_standin, github_client):
    github_standin.inject_fault(Fault.BAD_GATEWAY)
    client = github_client(retry=GithubRetry(total=2, backoff_factor=0))
    assert client.get_organization(GITHUB_ORGANIZATION).login == GITHUB_ORGANIZATION
    assert [record.status for record in github_standin.requests()] == [502, 200]
    assert github_standin.requests()[0].fault is Fault.BAD_GATEWAY


def test_request_log_never_holds_tokens(github_standin, github_client, github_git, tmp_path):
    github_standin.create_repository(REPO, auto_init=True)
    github_client().get_repo(REPO)
    github_git("clone", github_standin.clone_url(REPO), str(tmp_path / "w"), token=GITHUB_WRITER_TOKEN)
    assert GITHUB_WRITER_TOKEN not in repr(github_standin.requests())
    assert GITHUB_WRITER_TOKEN not in repr(TokenGrant(GITHUB_WRITER_TOKEN, "x"))


def test_stop_releases_thread_port_and_folder():
    standin = GitHubStandIn(organizations=[GITHUB_ORGANIZATION]).start()
    port = int(standin.url.rsplit(":", 1)[1])
    root = standin.root
    standin.create_repository(f"{GITHUB_ORGANIZATION}/x", auto_init=True)
    standin.stop()
    assert not any(thread.name == "github-standin" for thread in threading.enumerate())
    assert not root.exists()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
