"""A local GitHub: the REST endpoints PyGithub uses, over real bare git repositories served by git itself.

Peerbot creates one private repository per Slack user, clones it, pushes a branch per thread and opens a
pull request. This stand-in lets the real PyGithub and the real ``git`` CLI do all of that offline:

- **REST** (JSON shaped as GitHub answers, at ``/`` as on api.github.com and at ``/api/v3`` as on GitHub
  Enterprise Server): the authenticated user, users, organisations, repositories (get, create in an
  organisation or for the user), branches, pull requests (create, list, get, update) and ``/rate_limit``.
  Errors carry GitHub's bodies, so PyGithub raises the same exceptions it raises against GitHub.
- **Git over smart HTTP** at ``http://127.0.0.1:PORT/{owner}/{repo}.git``: ``git http-backend`` runs as a
  CGI behind the server, over real bare repositories in a temporary folder, protocol v2 included (so
  shallow clones work). Pushes and private repositories need HTTP Basic auth with a token as password;
  otherwise the answer is 401 with ``WWW-Authenticate`` so git asks its credential helper.
- **Tokens** (:class:`TokenGrant`): each belongs to a login and grants read, write or admin on
  organisations and repositories. Private repositories are invisible (404) to tokens without access,
  exactly as on GitHub; visible but read-only ones refuse writes with 403.
- **Faults** (:meth:`GitHubStandIn.inject_fault`): the next N matching requests answer 502/503, or a
  primary or secondary rate-limit error as GitHub shapes it (PyGithub raises
  ``RateLimitExceededException``). The primary rate limit is also really counted per user.
- **Thread-safe accessors** for tests: repositories, branches and commits (read from git), pull requests,
  file contents and a request log (which never holds a token).

What it does not do: forks and cross-repository pull requests, merging, reviews, issues, webhooks,
GraphQL, ETags, the dumb HTTP protocol, SSH. Draft pull requests are accepted in every repository (GitHub
refuses them in private repositories on the free plan).

Usage::

    with GitHubStandIn(
        organizations=["peerbot-community"],
        tokens=[TokenGrant("ghp_writer", "peerbot", organizations={"peerbot-community": Access.ADMIN})],
    ) as github:
        client = Github(base_url=github.api_url, auth=Auth.Token("ghp_writer"), retry=None)
        repo = client.get_organization("peerbot-community").create_repo("demo", private=True)
        subprocess.run(["git", "clone", github.clone_url("peerbot-community/demo")], ...)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlencode

from aiohttp import web

__all__ = [
    "API_PREFIX_ENTERPRISE",
    "Access",
    "CommitInfo",
    "Fault",
    "GitError",
    "GitHubStandIn",
    "PullRequestInfo",
    "RepositoryInfo",
    "RequestRecord",
    "TokenGrant",
]

# --- Constants ------------------------------------------------------------------------------------------

#: GitHub Enterprise Server serves the REST API under this prefix (git stays at the root, as here).
API_PREFIX_ENTERPRISE: Final = "/api/v3"
#: https://docs.github.com/rest/overview/rate-limits-for-the-rest-api: 5,000 requests an hour for a user's
#: token, 60 for unauthenticated requests (counted per IP address).
DEFAULT_RATE_LIMIT: Final = 5000
ANONYMOUS_RATE_LIMIT: Final = 60
RATE_LIMIT_WINDOW_SECONDS: Final = 3600
#: The search API has its own, smaller budget; only reported by /rate_limit.
SEARCH_RATE_LIMIT: Final = 30
#: List endpoints return 30 items a page unless ``per_page`` asks for more, and never more than 100.
DEFAULT_PER_PAGE: Final = 30
MAX_PER_PAGE: Final = 100
#: GitHub refuses repository names longer than 100 characters.
MAX_REPOSITORY_NAME: Final = 100
#: GitHub's default branch for new repositories since October 2020.
DEFAULT_BRANCH: Final = "main"
#: GitHub answers a secondary rate limit with ``Retry-After``; 60 seconds is what its documentation advises
#: waiting at least. Clients under test should pass ``retry=None`` or they will sleep this long.
SECONDARY_RATE_LIMIT_RETRY_AFTER_SECONDS: Final = 60
#: Pushes can carry large packs; GitHub's own limit is 2 GiB. The body is held in memory here, so stay
#: well below that: no test or demo pushes anywhere near this.
MAX_GIT_REQUEST_BYTES: Final = 512 * 1024 * 1024
#: Every git subprocess is bounded, so a stuck one fails the request instead of hanging the server.
GIT_TIMEOUT_SECONDS: Final = 60.0
#: How long start() waits for the server thread to listen, and stop() for it to finish.
THREAD_TIMEOUT_SECONDS: Final = 10.0
#: In-flight requests get this long to finish when the server stops.
SHUTDOWN_GRACE_SECONDS: Final = 1.0
#: Account and repository ids start here, far from GitHub's real ones, so a leaked id is recognisable.
FIRST_ID: Final = 9_000_001

_DOCS: Final = "https://docs.github.com/rest"
_DOC_GET_REPO: Final = f"{_DOCS}/repos/repos#get-a-repository"
_DOC_CREATE_ORG_REPO: Final = f"{_DOCS}/repos/repos#create-an-organization-repository"
_DOC_CREATE_USER_REPO: Final = f"{_DOCS}/repos/repos#create-a-repository-for-the-authenticated-user"
_DOC_GET_BRANCH: Final = f"{_DOCS}/branches/branches#get-a-branch"
_DOC_CREATE_PULL: Final = f"{_DOCS}/pulls/pulls#create-a-pull-request"
_DOC_UPDATE_PULL: Final = f"{_DOCS}/pulls/pulls#update-a-pull-request"
_DOC_GET_USER: Final = f"{_DOCS}/users/users#get-the-authenticated-user"
_DOC_PRIMARY_LIMIT: Final = f"{_DOCS}/overview/rate-limits-for-the-rest-api"
_DOC_SECONDARY_LIMIT: Final = f"{_DOCS}/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"

#: GitHub keeps letters, digits, ".", "-" and "_" in repository names and turns anything else into "-".
_REPO_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9._-]")
_GIT_PATH = re.compile(
    r"^/(?P<owner>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?/(?P<service>info/refs|git-upload-pack|git-receive-pack)$"
)
_GIT_SERVICES: Final = frozenset({"git-upload-pack", "git-receive-pack"})
_JSON_TYPE: Final = "application/json; charset=utf-8"
#: GitHub also takes the token as Basic user name with this (or an empty) password.
_OAUTH_BASIC: Final = "x-oauth-basic"
_USER_AGENT_MESSAGE: Final = (
    "Request forbidden by administrative rules. Please make sure your request has a User-Agent header "
    "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). "
    "Check https://developer.github.com for other possible causes."
)


class Access(enum.IntEnum):
    """What a token may do with a repository; each level includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3


class Fault(enum.Enum):
    """A failure :meth:`GitHubStandIn.inject_fault` can make the next requests answer with."""

    #: 502 Bad Gateway, as GitHub's front end answers when a backend times out.
    BAD_GATEWAY = 502
    #: 503 Service Unavailable, as during an incident.
    SERVICE_UNAVAILABLE = 503
    #: 403 "API rate limit exceeded for user ID ...", X-RateLimit-Remaining 0 (REST requests only).
    PRIMARY_RATE_LIMIT = "primary"
    #: 403 "You have exceeded a secondary rate limit ...", with Retry-After (REST requests only).
    SECONDARY_RATE_LIMIT = "secondary"


@dataclass(frozen=True)
class TokenGrant:
    """A token, the user it belongs to, and what it may reach.

    The user owns (admin) every repository under its own login. ``organizations`` grants a level on every
    repository of an organisation; WRITE or ADMIN there also allows creating repositories in it (GitHub's
    default: members may create repositories). ``repositories`` grants a level on single repositories,
    keyed ``owner/name``. Public repositories are readable by everyone, tokens or not.
    """

    token: str
    login: str
    organizations: Mapping[str, Access] = field(default_factory=dict)
    repositories: Mapping[str, Access] = field(default_factory=dict)

    def __repr__(self) -> str:  # the token itself never appears in test output or logs
        return (
            f"TokenGrant(login={self.login!r}, organizations={dict(self.organizations)!r}, "
            f"repositories={dict(self.repositories)!r})"
        )


@dataclass(frozen=True)
class RepositoryInfo:
    """A snapshot of one repository: what it is and where its bare git repository lives."""

    id: int
    owner: str
    name: str
    full_name: str
    private: bool
    default_branch: str
    path: Path


@dataclass(frozen=True)
class CommitInfo:
    """One commit as git records it."""

    sha: str
    tree: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    authored_at: datetime
    committer_name: str
    committer_email: str
    committed_at: datetime
    message: str


@dataclass(frozen=True)
class PullRequestInfo:
    """A snapshot of one pull request."""

    repository: str
    number: int
    title: str
    body: str | None
    head: str
    base: str
    head_sha: str
    state: Literal["open", "closed"]
    draft: bool
    user: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered. Credentials are never recorded, only whose they were."""

    kind: Literal["api", "git"]
    method: str
    path: str
    query: str
    status: int
    login: str | None
    fault: Fault | None
    at: datetime


class GitError(RuntimeError):
    """A git command the stand-in ran failed; the message holds the command and git's own words."""


# --- Internal state -------------------------------------------------------------------------------------


@dataclass
class _Account:
    login: str
    id: int
    kind: Literal["User", "Organization"]
    created_at: datetime


@dataclass
class _Pull:
    id: int
    number: int
    title: str
    body: str | None
    head: str
    base: str
    head_sha: str
    base_sha: str
    state: Literal["open", "closed"]
    draft: bool
    user: _Account
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None

    def label(self, repo: _Repo) -> str:
        """``owner:branch``, as GitHub names a pull request's head."""
        return f"{repo.owner.login}:{self.head}"


@dataclass
class _Repo:
    id: int
    owner: _Account
    name: str
    private: bool
    description: str | None
    default_branch: str
    path: Path
    created_at: datetime
    updated_at: datetime
    pushed_at: datetime | None
    pulls: list[_Pull] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"

    def info(self) -> RepositoryInfo:
        return RepositoryInfo(
            id=self.id,
            owner=self.owner.login,
            name=self.name,
            full_name=self.full_name,
            private=self.private,
            default_branch=self.default_branch,
            path=self.path,
        )


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int
    path_prefix: str | None


@dataclass
class _RateWindow:
    limit: int
    used: int
    reset: int


class _ApiError(Exception):
    """An error answer in GitHub's shape: message, optional errors, documentation_url and status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        documentation_url: str = _DOCS,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.documentation_url = documentation_url
        self.errors = errors
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        body["documentation_url"] = self.documentation_url
        body["status"] = str(self.status)
        return _json_response(body, status=self.status, headers=self.headers)


_DOC_MEMBERSHIP: Final = f"{_DOCS}/orgs/members#get-an-organization-membership-for-the-authenticated-user"


def _not_found(documentation_url: str = _DOCS) -> _ApiError:
    return _ApiError(404, "Not Found", documentation_url=documentation_url)


def _json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=json.dumps(data).encode(), headers=dict(headers or {}))
    response.headers["Content-Type"] = _JSON_TYPE
    return response


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Call:
    """One REST request, resolved: who asks, under which prefix, with which path parameters."""

    request: web.Request
    web_base: str
    api_base: str
    grant: TokenGrant | None
    params: dict[str, str]

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise _ApiError(400, "Problems parsing JSON") from None
        if not isinstance(data, dict):
            raise _ApiError(400, "Problems parsing JSON")
        return data


_Handler = Callable[[_Call], Awaitable[web.StreamResponse]]


def _field(body: Mapping[str, Any], name: str, kind: type, documentation_url: str) -> Any:
    """A body field, checked the way GitHub's schema validation words it; None when absent."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; GitHub's schema keeps them apart.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = {str: "a string", bool: "a boolean", int: "an integer"}[kind]
        raise _ApiError(
            422,
            f"Invalid request.\n\nFor 'properties/{name}', {json.dumps(value)} is not {expected}.",
            documentation_url=documentation_url,
        )
    return value


# --- The stand-in ---------------------------------------------------------------------------------------


class GitHubStandIn:
    """A local GitHub on 127.0.0.1: REST for PyGithub, smart HTTP for git, real bare repositories.

    Use it as a context manager or call :meth:`start` and :meth:`stop`. It runs its aiohttp server on its
    own event loop in a background thread, so sync code (PyGithub, git subprocesses) and async code can
    both talk to it; every accessor is thread-safe.

    Args:
        organizations: logins of the organisations that exist.
        tokens: the tokens that authenticate; their logins become users.
        root: where the bare repositories live; a temporary folder (removed by :meth:`stop`) if omitted.
        rate_limit: requests per hour per user before GitHub's primary rate limit answers 403.
    """

    def __init__(
        self,
        *,
        organizations: Iterable[str] = (),
        tokens: Iterable[TokenGrant] = (),
        root: Path | None = None,
        rate_limit: int = DEFAULT_RATE_LIMIT,
    ) -> None:
        self._lock = threading.RLock()
        self._create_lock = threading.Lock()
        self._ids = itertools.count(FIRST_ID)
        self._accounts: dict[str, _Account] = {}
        self._tokens: dict[str, TokenGrant] = {}
        self._repos: dict[str, _Repo] = {}
        self._faults: list[_PendingFault] = []
        self._rate: dict[str, _RateWindow] = {}
        self._log: list[RequestRecord] = []
        self._rate_limit = rate_limit
        self._owns_root = root is None
        self._root = Path(tempfile.mkdtemp(prefix="peerbot-github-")) if root is None else root
        self._repos_root = self._root / "repositories"
        self._home = self._root / "home"
        self._repos_root.mkdir(parents=True, exist_ok=True)
        self._home.mkdir(parents=True, exist_ok=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = self._build_routes()
        for login in organizations:
            self.add_organization(login)
        for grant in tokens:
            self.add_token(grant)

    # --- Lifecycle --------------------------------------------------------------------------------------

    def start(self) -> GitHubStandIn:
        """Start serving on a free port of 127.0.0.1; returns self."""
        if self._thread is not None:
            raise RuntimeError("the GitHub stand-in is already running: call stop() before starting it again")
        if shutil.which("git") is None:
            raise RuntimeError("the GitHub stand-in needs the git CLI on PATH: install git")
        ready = threading.Event()
        failures: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failures), name="github-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(THREAD_TIMEOUT_SECONDS):
            raise RuntimeError(
                f"the GitHub stand-in did not start listening within {THREAD_TIMEOUT_SECONDS}s"
            )
        if failures:
            self._thread.join(THREAD_TIMEOUT_SECONDS)
            self._thread = None
            raise RuntimeError(f"the GitHub stand-in could not start: {failures[0]!r}") from failures[0]
        return self

    def stop(self) -> None:
        """Stop serving, wait for the server thread, and remove the temporary folder if it made one."""
        thread, loop = self._thread, self._loop
        if thread is not None and loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            future.result(THREAD_TIMEOUT_SECONDS + SHUTDOWN_GRACE_SECONDS)
            thread.join(THREAD_TIMEOUT_SECONDS)
            if thread.is_alive():
                raise RuntimeError(
                    f"the GitHub stand-in thread did not stop within {THREAD_TIMEOUT_SECONDS}s"
                )
        self._thread = None
        self._loop = None
        self._port = None
        if self._owns_root:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, failures: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as error:  # reported to start(), which raises it in the caller's thread
            failures.append(error)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=MAX_GIT_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    # --- Addresses --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root, ``http://127.0.0.1:PORT``: web and git URLs live under it."""
        if self._port is None:
            raise RuntimeError("the GitHub stand-in is not running: call start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """The REST base as on api.github.com: ``Github(base_url=standin.api_url, ...)``."""
        return self.url

    @property
    def enterprise_api_url(self) -> str:
        """The REST base as on GitHub Enterprise Server (``.../api/v3``); git stays at :attr:`url`."""
        return self.url + API_PREFIX_ENTERPRISE

    def clone_url(self, full_name: str) -> str:
        """The HTTPS-style clone URL of ``owner/name`` (no credentials in it)."""
        return f"{self.url}/{full_name}.git"

    @property
    def root(self) -> Path:
        """The folder that holds the bare repositories."""
        return self._root

    # --- Configuration ----------------------------------------------------------------------------------

    def add_organization(self, login: str) -> None:
        """Make an organisation exist (a no-op if it does)."""
        with self._lock:
            existing = self._accounts.get(login.lower())
            if existing is not None:
                if existing.kind != "Organization":
                    raise ValueError(f"{login!r} is already a user; an organisation needs another login")
                return
            self._accounts[login.lower()] = _Account(login, next(self._ids), "Organization", _now())

    def add_token(self, grant: TokenGrant) -> None:
        """Accept a token from now on; its login becomes a user if it is not one yet."""
        with self._lock:
            existing = self._accounts.get(grant.login.lower())
            if existing is not None and existing.kind != "User":
                raise ValueError(f"{grant.login!r} is an organisation; a token belongs to a user login")
            if existing is None:
                self._accounts[grant.login.lower()] = _Account(grant.login, next(self._ids), "User", _now())
            self._tokens[grant.token] = TokenGrant(
                token=grant.token,
                login=grant.login,
                organizations={k.lower(): Access(v) for k, v in grant.organizations.items()},
                repositories={k.lower(): Access(v) for k, v in grant.repositories.items()},
            )

    def create_repository(
        self,
        full_name: str,
        *,
        private: bool = True,
        auto_init: bool = False,
        description: str | None = None,
    ) -> RepositoryInfo:
        """Create ``owner/name`` directly (for seeding tests), as the API would; the owner must exist."""
        owner_login, _, name = full_name.partition("/")
        with self._lock:
            owner = self._accounts.get(owner_login.lower())
        if owner is None or not name:
            raise ValueError(
                f"cannot create {full_name!r}: give owner/name with an existing user or organisation"
            )
        try:
            return self._create_repository(
                owner, name, private=private, auto_init=auto_init, description=description
            )
        except _ApiError as error:
            raise ValueError(f"cannot create {full_name!r}: {error.errors or error.message}") from None

    def inject_fault(self, fault: Fault, *, count: int = 1, path_prefix: str | None = None) -> None:
        """Make the next ``count`` requests (whose path starts with ``path_prefix``, if given) fail.

        Paths are matched as the API sees them, without the ``/api/v3`` prefix (``/repos/org/name/pulls``),
        and git paths as git sends them (``/org/name.git/info/refs``). Rate-limit faults only hit REST
        requests; 502 and 503 hit git requests too. Faults queue in the order they were injected.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._faults.append(_PendingFault(fault, count, path_prefix))

    def pending_faults(self) -> int:
        """How many injected failures are still waiting for a request."""
        with self._lock:
            return sum(pending.remaining for pending in self._faults)

    # --- Accessors for tests ----------------------------------------------------------------------------

    def repositories(self) -> list[RepositoryInfo]:
        """Every repository, in creation order."""
        with self._lock:
            return [repo.info() for repo in self._repos.values()]

    def repository(self, full_name: str) -> RepositoryInfo:
        """One repository by ``owner/name`` (case-insensitive, as on GitHub); KeyError if there is none."""
        return self._repo(full_name).info()

    def branches(self, full_name: str) -> dict[str, str]:
        """The branches of a repository and the commit each points at, read from git."""
        return self._branches(self._repo(full_name).path)

    def commits(self, full_name: str, ref: str | None = None) -> list[CommitInfo]:
        """The history of ``ref`` (default: the default branch), newest first, read from git."""
        repo = self._repo(full_name)
        sha = self._resolve(repo.path, ref or repo.default_branch)
        if sha is None:
            raise KeyError(f"{full_name} has no commit {ref or repo.default_branch!r}")
        return self._read_commits(repo.path, sha)

    def read_file(self, full_name: str, ref: str, path: str) -> bytes:
        """The content of ``path`` at ``ref``; KeyError when either does not exist."""
        repo = self._repo(full_name)
        sha = self._resolve(repo.path, ref)
        if sha is None:
            raise KeyError(f"{full_name} has no commit {ref!r}")
        try:
            return self._git(repo.path, "cat-file", "blob", f"{sha}:{path}")
        except GitError:
            raise KeyError(f"{full_name} has no file {path!r} at {ref!r}") from None

    def pull_requests(self, full_name: str | None = None) -> list[PullRequestInfo]:
        """Pull requests of one repository, or of all, oldest first; open ones show their branch's tip."""
        with self._lock:
            repos = [self._repo(full_name)] if full_name is not None else list(self._repos.values())
        tips = {repo.id: self._branches(repo.path) for repo in repos if repo.pulls}
        with self._lock:
            for repo in repos:
                for pull in repo.pulls:
                    self._refresh_pull(pull, tips[repo.id])
            return [self._pull_info(repo, pull) for repo in repos for pull in repo.pulls]

    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Forget the request log (faults and rate-limit counters are untouched)."""
        with self._lock:
            self._log.clear()

    def _repo(self, full_name: str) -> _Repo:
        with self._lock:
            repo = self._repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"no repository {full_name!r} in the GitHub stand-in")
        return repo

    @staticmethod
    def _pull_info(repo: _Repo, pull: _Pull) -> PullRequestInfo:
        return PullRequestInfo(
            repository=repo.full_name,
            number=pull.number,
            title=pull.title,
            body=pull.body,
            head=pull.head,
            base=pull.base,
            head_sha=pull.head_sha,
            state=pull.state,
            draft=pull.draft,
            user=pull.user.login,
            created_at=pull.created_at,
            updated_at=pull.updated_at,
            closed_at=pull.closed_at,
        )

    # --- Git (sync; handlers call these through asyncio.to_thread) -------------------------------------

    def _git_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: no system or user git config, no prompts, nothing from the caller's repo."""
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self._home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
        env.update(extra or {})
        return env

    def _git(
        self,
        git_dir: Path,
        *args: str,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        command = ["git", f"--git-dir={git_dir}", *args]
        try:
            result = subprocess.run(
                command,
                input=input,
                capture_output=True,
                env=self._git_env(env),
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise GitError(f"{' '.join(command)} took longer than {GIT_TIMEOUT_SECONDS}s") from error
        if result.returncode != 0:
            raise GitError(
                f"{' '.join(command)} failed with exit code {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout

    def _create_repository(
        self,
        owner: _Account,
        name: str,
        *,
        private: bool,
        auto_init: bool,
        description: str | None,
        creator: _Account | None = None,
    ) -> RepositoryInfo:
        """Create the record and the bare repository; raises _ApiError(422) if the name is taken."""
        key = f"{owner.login}/{name}".lower()
        with self._create_lock:
            with self._lock:
                if key in self._repos:
                    raise _ApiError(
                        422,
                        "Repository creation failed.",
                        errors=[
                            {
                                "resource": "Repository",
                                "code": "custom",
                                "field": "name",
                                "message": "name already exists on this account",
                            }
                        ],
                        documentation_url=_DOC_CREATE_ORG_REPO
                        if owner.kind == "Organization"
                        else _DOC_CREATE_USER_REPO,
                    )
            path = self._repos_root / owner.login.lower() / f"{name.lower()}.git"
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # left over from an earlier run in a caller-provided root
                shutil.rmtree(path)
            subprocess_args = ["init", "--bare", "--quiet", f"--initial-branch={DEFAULT_BRANCH}"]
            self._git(path, *subprocess_args)
            # GitHub lets clients fetch any reachable commit and filter objects (partial clone).
            self._git(path, "config", "uploadpack.allowFilter", "true")
            self._git(path, "config", "uploadpack.allowReachableSHA1InWant", "true")
            now = _now()
            pushed_at = None
            if auto_init:
                self._initial_commit(path, name, description, creator or owner)
                pushed_at = now
            repo = _Repo(
                id=next(self._ids),
                owner=owner,
                name=name,
                private=private,
                description=description,
                default_branch=DEFAULT_BRANCH,
                path=path,
                created_at=now,
                updated_at=now,
                pushed_at=pushed_at,
            )
            with self._lock:
                self._repos[key] = repo
            return repo.info()

    def _initial_commit(self, path: Path, name: str, description: str | None, author: _Account) -> None:
        """GitHub's ``auto_init``: one commit with a README, authored by the creator, committed by GitHub."""
        readme = f"# {name}\n" + (f"{description}\n" if description else "")
        blob = self._git(path, "hash-object", "-w", "--stdin", input=readme.encode()).decode().strip()
        tree = self._git(path, "mktree", input=f"100644 blob {blob}\tREADME.md\n".encode()).decode().strip()
        identity = {
            "GIT_AUTHOR_NAME": author.login,
            "GIT_AUTHOR_EMAIL": f"{author.id}+{author.login}@users.noreply.github.com",
            "GIT_COMMITTER_NAME": "GitHub",
            "GIT_COMMITTER_EMAIL": "noreply@github.com",
        }
        commit = self._git(path, "commit-tree", tree, "-m", "Initial commit", env=identity).decode().strip()
        self._git(path, "update-ref", f"refs/heads/{DEFAULT_BRANCH}", commit)

    def _branches(self, path: Path) -> dict[str, str]:
        output = self._git(path, "for-each-ref", "--format=%(refname)%00%(objectname)", "refs/heads/")
        branches: dict[str, str] = {}
        for line in output.decode().splitlines():
            ref, _, sha = line.partition("\x00")
            branches[ref.removeprefix("refs/heads/")] = sha
        return branches

    def _resolve(self, path: Path, ref: str) -> str | None:
        """The commit a branch name, full ref or sha names; None when there is none."""
        try:
            return (
                self._git(path, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
                .decode()
                .strip()
            )
        except GitError:
            return None

    def _read_commits(self, path: Path, sha: str, limit: int | None = None) -> list[CommitInfo]:
        fields = "%H%x1f%T%x1f%P%x1f%an%x1f%ae%x1f%aI%x1f%cn%x1f%ce%x1f%cI%x1f%B"
        args = ["log", "-z", f"--format={fields}"]
        if limit is not None:
            args.append(f"--max-count={limit}")
        output = self._git(path, *args, sha, "--")
        commits = []
        for record in output.decode(errors="replace").split("\x00"):
            if not record:
                continue
            parts = record.split("\x1f", 9)
            commits.append(
                CommitInfo(
                    sha=parts[0],
                    tree=parts[1],
                    parents=tuple(parts[2].split()),
                    author_name=parts[3],
                    author_email=parts[4],
                    authored_at=datetime.fromisoformat(parts[5]).astimezone(UTC),
                    committer_name=parts[6],
                    committer_email=parts[7],
                    committed_at=datetime.fromisoformat(parts[8]).astimezone(UTC),
                    message=parts[9],
                )
            )
        return commits

    def _ahead(self, path: Path, base_sha: str, head_sha: str) -> int:
        """Commits on head that base does not have: what a pull request would bring."""
        return int(self._git(path, "rev-list", "--count", f"{base_sha}..{head_sha}").decode().strip())

    def _diff_stats(self, path: Path, base_sha: str, head_sha: str) -> tuple[int, int, int]:
        """(additions, deletions, changed files) between the merge base and head, as a PR shows them."""
        output = self._git(path, "diff", "--numstat", f"{base_sha}...{head_sha}", "--").decode()
        additions = deletions = files = 0
        for line in output.splitlines():
            added, deleted, _ = line.split("\t", 2)
            files += 1
            additions += int(added) if added.isdigit() else 0  # "-" for binary files
            deletions += int(deleted) if deleted.isdigit() else 0
        return additions, deletions, files

    # --- Request handling -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        git_match = None
        prefix = ""
        if path == API_PREFIX_ENTERPRISE or path.startswith(API_PREFIX_ENTERPRISE + "/"):
            prefix, route_path = API_PREFIX_ENTERPRISE, path[len(API_PREFIX_ENTERPRISE) :] or "/"
        else:
            route_path = path
            git_match = _GIT_PATH.match(path)
        kind: Literal["api", "git"] = "git" if git_match else "api"
        token, malformed = self._credentials(request, kind)
        with self._lock:
            grant = self._tokens.get(token) if token is not None else None
        fault = self._take_fault(kind, route_path)
        response: web.StreamResponse
        if fault is not None:
            response = self._fault_response(fault, grant, request)
        elif git_match is not None:
            response = await self._handle_git(request, git_match, token, grant, malformed)
        else:
            response = await self._handle_api(request, prefix, route_path, token, grant, malformed)
        with self._lock:
            self._log.append(
                RequestRecord(
                    kind=kind,
                    method=request.method,
                    path=path,
                    query=request.query_string,
                    status=response.status,
                    login=grant.login if grant else None,
                    fault=fault,
                    at=_now(),
                )
            )
        return response

    @staticmethod
    def _credentials(request: web.Request, kind: Literal["api", "git"]) -> tuple[str | None, bool]:
        """The token a request carries (or None) and whether its Authorization header was unreadable.

        The REST API takes ``token X`` or ``Bearer X``; git sends HTTP Basic with the token as password
        (or as user name with an empty or ``x-oauth-basic`` password, which GitHub also accepts).
        """
        header = request.headers.get("Authorization")
        if not header:
            return None, False
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if kind == "api" and scheme in ("token", "bearer") and value:
            return value, False
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, True
            if password and password != _OAUTH_BASIC:
                return password, False
            return (user or None), not user
        return None, True

    def _take_fault(self, kind: Literal["api", "git"], route_path: str) -> Fault | None:
        with self._lock:
            for pending in self._faults:
                if pending.path_prefix is not None and not route_path.startswith(pending.path_prefix):
                    continue
                if kind == "git" and pending.fault in (Fault.PRIMARY_RATE_LIMIT, Fault.SECONDARY_RATE_LIMIT):
                    continue
                pending.remaining -= 1
                if pending.remaining == 0:
                    self._faults.remove(pending)
                return pending.fault
        return None

    def _fault_response(self, fault: Fault, grant: TokenGrant | None, request: web.Request) -> web.Response:
        request_id = self._request_id()
        headers = {"X-GitHub-Request-Id": request_id}
        if fault is Fault.BAD_GATEWAY:
            return _json_response({"message": "Server Error"}, status=502, headers=headers)
        if fault is Fault.SERVICE_UNAVAILABLE:
            return _json_response({"message": "Service Unavailable"}, status=503, headers=headers)
        window = self._window(grant, request)
        if fault is Fault.PRIMARY_RATE_LIMIT:
            headers.update(self._rate_headers(window, remaining=0))
            message = self._primary_limit_message(grant, request)
            return _ApiError(403, message, documentation_url=_DOC_PRIMARY_LIMIT, headers=headers).response()
        # A secondary limit is about bursts, not the hourly budget: the budget headers stay as they are.
        headers.update(self._rate_headers(window))
        headers["Retry-After"] = str(SECONDARY_RATE_LIMIT_RETRY_AFTER_SECONDS)
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
            f"If you reach out to GitHub Support for help, please include the request ID {request_id}."
        )
        return _ApiError(403, message, documentation_url=_DOC_SECONDARY_LIMIT, headers=headers).response()

    def _primary_limit_message(self, grant: TokenGrant | None, request: web.Request) -> str:
        if grant is None:
            return (
                f"API rate limit exceeded for {request.remote}. (But here's the good news: Authenticated "
                "requests get a higher rate limit. Check out the documentation for more details.)"
            )
        with self._lock:
            user_id = self._accounts[grant.login.lower()].id
        return f"API rate limit exceeded for user ID {user_id}."

    @staticmethod
    def _request_id() -> str:
        """An id shaped like GitHub's X-GitHub-Request-Id (``C0DE:1F2E:3A4B5C:6D7E8F:65A1B2C3``)."""
        parts = (secrets.token_hex(2), secrets.token_hex(2), secrets.token_hex(3), secrets.token_hex(3))
        return ":".join(part.upper() for part in parts) + f":{int(time.time()):08X}"

    # --- Rate limit -------------------------------------------------------------------------------------

    def _window(self, grant: TokenGrant | None, request: web.Request) -> _RateWindow:
        """The current hour's budget of a user (all its tokens share it) or of an anonymous address."""
        key = f"user:{grant.login.lower()}" if grant else f"ip:{request.remote}"
        limit = self._rate_limit if grant else ANONYMOUS_RATE_LIMIT
        now = int(time.time())
        with self._lock:
            window = self._rate.get(key)
            if window is None or window.reset <= now:
                window = _RateWindow(limit=limit, used=0, reset=now + RATE_LIMIT_WINDOW_SECONDS)
                self._rate[key] = window
            return window

    @staticmethod
    def _rate_headers(window: _RateWindow, remaining: int | None = None) -> dict[str, str]:
        left = max(window.limit - window.used, 0) if remaining is None else remaining
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(window.reset),
            "X-RateLimit-Used": str(window.limit - left),
            "X-RateLimit-Resource": "core",
        }

    # --- REST -------------------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], _Handler]]:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        table: list[tuple[str, str, _Handler]] = [
            ("GET", r"/user", self._get_authenticated_user),
            ("POST", r"/user/repos", self._create_user_repo),
            ("GET", r"/users/(?P<login>[^/]+)", self._get_user),
            ("GET", r"/orgs/(?P<org>[^/]+)", self._get_org),
            ("GET", r"/user/memberships/orgs/(?P<org>[^/]+)", self._get_membership),
            ("POST", r"/orgs/(?P<org>[^/]+)/repos", self._create_org_repo),
            ("GET", repo, self._get_repo),
            ("GET", repo + r"/branches", self._list_branches),
            ("GET", repo + r"/branches/(?P<branch>.+)", self._get_branch),
            ("GET", repo + r"/pulls", self._list_pulls),
            ("POST", repo + r"/pulls", self._create_pull),
            ("GET", repo + r"/pulls/(?P<number>[0-9]+)", self._get_pull),
            ("PATCH", repo + r"/pulls/(?P<number>[0-9]+)", self._update_pull),
            ("GET", r"/rate_limit", self._get_rate_limit),
        ]
        return [(method, re.compile(f"^{pattern}/?$"), handler) for method, pattern, handler in table]

    async def _handle_api(
        self,
        request: web.Request,
        prefix: str,
        route_path: str,
        token: str | None,
        grant: TokenGrant | None,
        malformed: bool,
    ) -> web.StreamResponse:
        headers = {"X-GitHub-Request-Id": self._request_id(), "X-GitHub-Media-Type": "github.v3; format=json"}
        if grant is not None:
            headers["X-OAuth-Scopes"] = "repo, read:org"
        try:
            if not request.headers.get("User-Agent"):
                raise _ApiError(403, _USER_AGENT_MESSAGE)
            if malformed or (token is not None and grant is None):
                raise _ApiError(401, "Bad credentials")
            window = self._window(grant, request)
            if route_path.rstrip("/") != "/rate_limit":  # asking for the rate limit costs nothing
                with self._lock:
                    exhausted = window.used >= window.limit
                    if not exhausted:
                        window.used += 1
                if exhausted:
                    raise _ApiError(
                        403,
                        self._primary_limit_message(grant, request),
                        documentation_url=_DOC_PRIMARY_LIMIT,
                        headers=self._rate_headers(window),
                    )
            headers.update(self._rate_headers(window))
            handler, params = self._route(request.method, route_path)
            base = f"{request.scheme}://{request.host}"
            call = _Call(request, web_base=base, api_base=base + prefix, grant=grant, params=params)
            response = await handler(call)
        except _ApiError as error:
            response = error.response()
        except GitError as error:  # a stand-in failure, not GitHub's answer: say so loudly
            response = _ApiError(500, f"GitHub stand-in: {error}").response()
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    def _route(self, method: str, path: str) -> tuple[_Handler, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                return handler, match.groupdict()
        raise _not_found()

    def _account(self, login: str) -> _Account | None:
        with self._lock:
            return self._accounts.get(login.lower())

    def _user_of(self, call: _Call) -> _Account:
        if call.grant is None:
            raise _ApiError(401, "Requires authentication", documentation_url=_DOC_GET_USER)
        account = self._account(call.grant.login)
        assert account is not None
        return account

    def _access(self, grant: TokenGrant | None, repo: _Repo) -> Access | None:
        """What ``grant`` may do with ``repo``; None means it cannot even see it."""
        levels: list[Access] = [] if repo.private else [Access.READ]
        if grant is not None:
            if grant.login.lower() == repo.owner.login.lower():
                levels.append(Access.ADMIN)
            for level in (
                grant.organizations.get(repo.owner.login.lower()),
                grant.repositories.get(repo.full_name.lower()),
            ):
                if level is not None:
                    levels.append(level)
        return max(levels) if levels else None

    def _visible_repo(self, call: _Call) -> tuple[_Repo, Access]:
        """The repository of the path, or the 404 GitHub gives both for missing and for invisible ones."""
        with self._lock:
            repo = self._repos.get(f"{call.params['owner']}/{call.params['repo']}".lower())
        access = self._access(call.grant, repo) if repo is not None else None
        if repo is None or access is None:
            raise _not_found(_DOC_GET_REPO)
        return repo, access

    # JSON shapes -----------------------------------------------------------------------------------------

    @staticmethod
    def _account_json(call: _Call, account: _Account) -> dict[str, Any]:
        api = f"{call.api_base}/users/{account.login}"
        return {
            "login": account.login,
            "id": account.id,
            "node_id": base64.b64encode(f"04:{account.kind}{account.id}".encode()).decode(),
            "avatar_url": f"{call.web_base}/avatars/{account.login}",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{call.web_base}/{account.login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": account.kind,
            "user_view_type": "public",
            "site_admin": False,
        }

    def _account_detail_json(self, call: _Call, account: _Account) -> dict[str, Any]:
        with self._lock:
            owned = [repo for repo in self._repos.values() if repo.owner is account]
        data = self._account_json(call, account) | {
            "name": None,
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": sum(1 for repo in owned if not repo.private),
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": _iso(account.created_at),
            "updated_at": _iso(account.created_at),
        }
        if account.kind == "User":
            data["hireable"] = None
        return data

    def _org_json(self, call: _Call, org: _Account) -> dict[str, Any]:
        api = f"{call.api_base}/orgs/{org.login}"
        detail = self._account_detail_json(call, org)
        return {
            "login": org.login,
            "id": org.id,
            "node_id": detail["node_id"],
            "url": api,
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events",
            "hooks_url": f"{api}/hooks",
            "issues_url": f"{api}/issues",
            "members_url": f"{api}/members{{/member}}",
            "public_members_url": f"{api}/public_members{{/member}}",
            "avatar_url": detail["avatar_url"],
            "description": None,
            "name": None,
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "twitter_username": None,
            "is_verified": False,
            "has_organization_projects": True,
            "has_repository_projects": True,
            "public_repos": detail["public_repos"],
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "html_url": detail["html_url"],
            "created_at": detail["created_at"],
            "updated_at": detail["updated_at"],
            "archived_at": None,
            "type": "Organization",
        }

    def _repo_json(self, call: _Call, repo: _Repo, access: Access | None) -> dict[str, Any]:
        api = f"{call.api_base}/repos/{repo.full_name}"
        html = f"{call.web_base}/{repo.full_name}"
        with self._lock:
            open_pulls = sum(1 for pull in repo.pulls if pull.state == "open")
        data: dict[str, Any] = {
            "id": repo.id,
            "node_id": base64.b64encode(f"010:Repository{repo.id}".encode()).decode(),
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self._account_json(call, repo.owner),
            "html_url": html,
            "description": repo.description,
            "fork": False,
            "url": api,
            "branches_url": f"{api}/branches{{/branch}}",
            "commits_url": f"{api}/commits{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "issues_url": f"{api}/issues{{/number}}",
            "contents_url": f"{api}/contents/{{+path}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "hooks_url": f"{api}/hooks",
            "created_at": _iso(repo.created_at),
            "updated_at": _iso(repo.updated_at),
            "pushed_at": _iso(repo.pushed_at),
            "git_url": f"git://{call.request.host}/{repo.full_name}.git",
            "ssh_url": f"git@{call.request.host}:{repo.full_name}.git",
            "clone_url": f"{call.web_base}/{repo.full_name}.git",
            "svn_url": html,
            "homepage": None,
            "size": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": None,
            "has_issues": True,
            "has_projects": True,
            "has_downloads": True,
            "has_wiki": True,
            "has_pages": False,
            "has_discussions": False,
            "forks_count": 0,
            "mirror_url": None,
            "archived": False,
            "disabled": False,
            "open_issues_count": open_pulls,
            "license": None,
            "allow_forking": True,
            "is_template": False,
            "web_commit_signoff_required": False,
            "topics": [],
            "visibility": "private" if repo.private else "public",
            "forks": 0,
            "open_issues": open_pulls,
            "watchers": 0,
            "default_branch": repo.default_branch,
        }
        if call.grant is not None and access is not None:
            data["permissions"] = {
                "admin": access >= Access.ADMIN,
                "maintain": access >= Access.ADMIN,
                "push": access >= Access.WRITE,
                "triage": access >= Access.WRITE,
                "pull": True,
            }
        if repo.owner.kind == "Organization":
            data["organization"] = self._account_json(call, repo.owner)
        return data

    @staticmethod
    def _commit_json(call: _Call, repo: _Repo, commit: CommitInfo) -> dict[str, Any]:
        api = f"{call.api_base}/repos/{repo.full_name}"
        html = f"{call.web_base}/{repo.full_name}"
        return {
            "sha": commit.sha,
            "node_id": base64.b64encode(f"06:Commit{repo.id}:{commit.sha}".encode()).decode(),
            "commit": {
                "author": {
                    "name": commit.author_name,
                    "email": commit.author_email,
                    "date": _iso(commit.authored_at),
                },
                "committer": {
                    "name": commit.committer_name,
                    "email": commit.committer_email,
                    "date": _iso(commit.committed_at),
                },
                "message": commit.message.rstrip("\n"),
                "tree": {"sha": commit.tree, "url": f"{api}/git/trees/{commit.tree}"},
                "url": f"{api}/git/commits/{commit.sha}",
                "comment_count": 0,
                "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None},
            },
            "url": f"{api}/commits/{commit.sha}",
            "html_url": f"{html}/commit/{commit.sha}",
            "comments_url": f"{api}/commits/{commit.sha}/comments",
            "author": None,  # git identities are not linked to accounts here
            "committer": None,
            "parents": [
                {"sha": parent, "url": f"{api}/commits/{parent}", "html_url": f"{html}/commit/{parent}"}
                for parent in commit.parents
            ],
        }

    def _pull_json(self, call: _Call, repo: _Repo, pull: _Pull, *, detail: bool) -> dict[str, Any]:
        api = f"{call.api_base}/repos/{repo.full_name}"
        html = f"{call.web_base}/{repo.full_name}/pull/{pull.number}"
        repo_json = self._repo_json(call, repo, None)

        def part(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{repo.owner.login}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": self._account_json(call, repo.owner),
                "repo": repo_json,
            }

        data: dict[str, Any] = {
            "url": f"{api}/pulls/{pull.number}",
            "id": pull.id,
            "node_id": base64.b64encode(f"011:PullRequest{pull.id}".encode()).decode(),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": f"{api}/issues/{pull.number}",
            "commits_url": f"{api}/pulls/{pull.number}/commits",
            "review_comments_url": f"{api}/pulls/{pull.number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{pull.number}/comments",
            "statuses_url": f"{api}/statuses/{pull.head_sha}",
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": self._account_json(call, pull.user),
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _iso(pull.created_at),
            "updated_at": _iso(pull.updated_at),
            "closed_at": _iso(pull.closed_at),
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": part(pull.head, pull.head_sha),
            "base": part(pull.base, pull.base_sha),
            "author_association": "OWNER" if pull.user is repo.owner else "MEMBER",
            "auto_merge": None,
            "draft": pull.draft,
        }
        if detail:
            ahead = self._ahead(repo.path, pull.base_sha, pull.head_sha)
            additions, deletions, files = self._diff_stats(repo.path, pull.base_sha, pull.head_sha)
            data |= {
                "merged": False,
                "mergeable": None,  # GitHub computes this in the background and answers null at first
                "rebaseable": None,
                "mergeable_state": "unknown",
                "merged_by": None,
                "comments": 0,
                "review_comments": 0,
                "maintainer_can_modify": False,
                "commits": ahead,
                "additions": additions,
                "deletions": deletions,
                "changed_files": files,
            }
        return data

    def _paginate(self, call: _Call, items: Sequence[Any]) -> web.Response:
        """One page of a list, with the Link header PyGithub follows for the next pages."""
        query = call.request.query
        per_page = _int_or(query.get("per_page"), DEFAULT_PER_PAGE)
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        page = max(_int_or(query.get("page"), 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)
        links = []
        base = call.api_base + call.request.path.removeprefix(API_PREFIX_ENTERPRISE)

        def link(number: int, rel: str) -> str:
            params = dict(query) | {"per_page": str(per_page), "page": str(number)}
            return f'<{base}?{urlencode(params)}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        response = _json_response(list(items[(page - 1) * per_page : page * per_page]))
        if links:
            response.headers["Link"] = ", ".join(links)
        return response

    # Handlers --------------------------------------------------------------------------------------------

    async def _get_authenticated_user(self, call: _Call) -> web.StreamResponse:
        account = self._user_of(call)
        data = self._account_detail_json(call, account)
        with self._lock:
            owned = [repo for repo in self._repos.values() if repo.owner is account]
        data |= {
            "total_private_repos": sum(1 for repo in owned if repo.private),
            "owned_private_repos": sum(1 for repo in owned if repo.private),
            "private_gists": 0,
            "disk_usage": 0,
            "collaborators": 0,
            "two_factor_authentication": True,
        }
        return _json_response(data)

    async def _get_user(self, call: _Call) -> web.StreamResponse:
        account = self._account(call.params["login"])
        if account is None:
            raise _not_found(f"{_DOCS}/users/users#get-a-user")
        return _json_response(self._account_detail_json(call, account))

    async def _get_org(self, call: _Call) -> web.StreamResponse:
        org = self._account(call.params["org"])
        if org is None or org.kind != "Organization":
            raise _not_found(f"{_DOCS}/orgs/orgs#get-an-organization")
        return _json_response(self._org_json(call, org))

    async def _get_membership(self, call: _Call) -> web.StreamResponse:
        """The authenticated user's membership of an organisation: admin for ADMIN grants, member for WRITE;
        404 (as on GitHub for a non-member) otherwise: READ is this stand-in's "may look, not create"."""
        user = self._user_of(call)
        org = self._account(call.params["org"])
        if org is None or org.kind != "Organization":
            raise _not_found(_DOC_MEMBERSHIP)
        assert call.grant is not None
        access = call.grant.organizations.get(org.login.lower())
        if access is None or access < Access.WRITE:
            raise _not_found(_DOC_MEMBERSHIP)
        api = call.api_base
        return _json_response(
            {
                "url": f"{api}/orgs/{org.login}/memberships/{user.login}",
                "state": "active",
                "role": "admin" if access >= Access.ADMIN else "member",
                "organization_url": f"{api}/orgs/{org.login}",
                "organization": self._account_json(call, org),
                "user": self._account_json(call, user),
            }
        )

    async def _create_org_repo(self, call: _Call) -> web.StreamResponse:
        org = self._account(call.params["org"])
        if org is None or org.kind != "Organization":
            raise _not_found(_DOC_CREATE_ORG_REPO)
        user = self._user_of(call)
        assert call.grant is not None
        if call.grant.organizations.get(org.login.lower(), Access.READ) < Access.WRITE:
            raise _ApiError(
                403,
                "You need admin access to the organization before adding a repository to it.",
                documentation_url=_DOC_CREATE_ORG_REPO,
            )
        return await self._create_repo_from(call, org, user, _DOC_CREATE_ORG_REPO)

    async def _create_user_repo(self, call: _Call) -> web.StreamResponse:
        user = self._user_of(call)
        return await self._create_repo_from(call, user, user, _DOC_CREATE_USER_REPO)

    async def _create_repo_from(
        self, call: _Call, owner: _Account, creator: _Account, documentation_url: str
    ) -> web.StreamResponse:
        body = await call.body()
        raw_name = _field(body, "name", str, documentation_url)
        if not raw_name or not raw_name.strip():
            raise _ApiError(
                422,
                "Repository creation failed.",
                errors=[{"resource": "Repository", "code": "missing_field", "field": "name"}],
                documentation_url=documentation_url,
            )
        name = _REPO_NAME_FORBIDDEN.sub("-", raw_name.strip())
        if len(name) > MAX_REPOSITORY_NAME or name in (".", ".."):
            raise _ApiError(
                422,
                "Repository creation failed.",
                errors=[
                    {
                        "resource": "Repository",
                        "code": "custom",
                        "field": "name",
                        "message": f"name is too long (maximum is {MAX_REPOSITORY_NAME} characters)"
                        if len(name) > MAX_REPOSITORY_NAME
                        else "name is reserved",
                    }
                ],
                documentation_url=documentation_url,
            )
        # As on GitHub, a repository is public unless the request says otherwise.
        private = bool(_field(body, "private", bool, documentation_url))
        visibility = _field(body, "visibility", str, documentation_url)
        if visibility is not None:
            if visibility not in ("public", "private"):
                raise _ApiError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "Repository", "code": "invalid", "field": "visibility"}],
                    documentation_url=documentation_url,
                )
            private = visibility == "private"
        auto_init = bool(_field(body, "auto_init", bool, documentation_url))
        description = _field(body, "description", str, documentation_url)
        info = await asyncio.to_thread(
            self._create_repository,
            owner,
            name,
            private=private,
            auto_init=auto_init,
            description=description,
            creator=creator,
        )
        repo = self._repo(info.full_name)
        response = _json_response(
            self._repo_json(call, repo, self._access(call.grant, repo)),
            status=201,
            headers={"Location": f"{call.api_base}/repos/{repo.full_name}"},
        )
        return response

    async def _get_repo(self, call: _Call) -> web.StreamResponse:
        repo, access = self._visible_repo(call)
        return _json_response(self._repo_json(call, repo, access))

    async def _list_branches(self, call: _Call) -> web.StreamResponse:
        repo, _ = self._visible_repo(call)
        branches = await asyncio.to_thread(self._branches, repo.path)
        api = f"{call.api_base}/repos/{repo.full_name}"
        items = [
            {"name": name, "commit": {"sha": sha, "url": f"{api}/commits/{sha}"}, "protected": False}
            for name, sha in sorted(branches.items())
        ]
        return self._paginate(call, items)

    async def _get_branch(self, call: _Call) -> web.StreamResponse:
        repo, _ = self._visible_repo(call)
        name = call.params["branch"]
        branches = await asyncio.to_thread(self._branches, repo.path)
        if name not in branches:
            raise _ApiError(404, "Branch not found", documentation_url=_DOC_GET_BRANCH)
        commits = await asyncio.to_thread(self._read_commits, repo.path, branches[name], 1)
        api = f"{call.api_base}/repos/{repo.full_name}"
        return _json_response(
            {
                "name": name,
                "commit": self._commit_json(call, repo, commits[0]),
                "_links": {
                    "self": f"{api}/branches/{name}",
                    "html": f"{call.web_base}/{repo.full_name}/tree/{name}",
                },
                "protected": False,
                "protection": {
                    "enabled": False,
                    "required_status_checks": {"enforcement_level": "off", "contexts": [], "checks": []},
                },
                "protection_url": f"{api}/branches/{name}/protection",
            }
        )

    @staticmethod
    def _refresh_pull(pull: _Pull, branches: Mapping[str, str]) -> None:
        """An open pull request follows its branches; a closed one keeps what it had."""
        if pull.state == "open":
            pull.head_sha = branches.get(pull.head, pull.head_sha)
            pull.base_sha = branches.get(pull.base, pull.base_sha)

    def _pull_of(self, call: _Call, repo: _Repo) -> _Pull:
        number = int(call.params["number"])
        with self._lock:
            for pull in repo.pulls:
                if pull.number == number:
                    return pull
        raise _not_found(f"{_DOCS}/pulls/pulls#get-a-pull-request")

    async def _list_pulls(self, call: _Call) -> web.StreamResponse:
        repo, _ = self._visible_repo(call)
        query = call.request.query
        state = query.get("state", "open")
        head = query.get("head")
        base = query.get("base")
        branches = await asyncio.to_thread(self._branches, repo.path)
        with self._lock:
            pulls = list(repo.pulls)
            for pull in pulls:
                self._refresh_pull(pull, branches)
        if state in ("open", "closed"):
            pulls = [pull for pull in pulls if pull.state == state]
        # GitHub filters on head only in the form "owner:branch"; a bare branch name is silently ignored.
        if head is not None and ":" in head:
            head_owner, _, head_ref = head.partition(":")
            pulls = [
                pull
                for pull in pulls
                if head_owner.lower() == repo.owner.login.lower() and (not head_ref or pull.head == head_ref)
            ]
        if base is not None:
            pulls = [pull for pull in pulls if pull.base == base]
        descending = query.get("direction", "desc") != "asc"
        pulls.sort(key=lambda pull: pull.number, reverse=descending)
        return self._paginate(call, [self._pull_json(call, repo, pull, detail=False) for pull in pulls])

    async def _get_pull(self, call: _Call) -> web.StreamResponse:
        repo, _ = self._visible_repo(call)
        pull = self._pull_of(call, repo)
        branches = await asyncio.to_thread(self._branches, repo.path)
        with self._lock:
            self._refresh_pull(pull, branches)
        data = await asyncio.to_thread(self._pull_json, call, repo, pull, detail=True)
        return _json_response(data)

    def _pull_invalid(self, field_name: str) -> _ApiError:
        return _ApiError(
            422,
            "Validation Failed",
            errors=[{"resource": "PullRequest", "field": field_name, "code": "invalid"}],
            documentation_url=_DOC_CREATE_PULL,
        )

    async def _create_pull(self, call: _Call) -> web.StreamResponse:
        repo, _ = self._visible_repo(call)
        user = self._user_of(call)
        body = await call.body()
        title = _field(body, "title", str, _DOC_CREATE_PULL)
        head = _field(body, "head", str, _DOC_CREATE_PULL)
        base = _field(body, "base", str, _DOC_CREATE_PULL)
        text = _field(body, "body", str, _DOC_CREATE_PULL)
        draft = bool(_field(body, "draft", bool, _DOC_CREATE_PULL))
        for name, value in (("head", head), ("base", base), ("title", title)):
            if not value:
                raise _ApiError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "PullRequest", "code": "missing_field", "field": name}],
                    documentation_url=_DOC_CREATE_PULL,
                )
        assert head is not None
        assert base is not None
        assert title is not None
        head_owner, _, head_ref = head.rpartition(":")
        if head_owner and head_owner.lower() != repo.owner.login.lower():
            raise self._pull_invalid("head")  # forks are not modelled: only same-repository heads exist
        branches = await asyncio.to_thread(self._branches, repo.path)
        if head_ref not in branches:
            raise self._pull_invalid("head")
        if base not in branches:
            raise self._pull_invalid("base")
        with self._lock:
            duplicate = any(
                pull.state == "open" and pull.head == head_ref and pull.base == base for pull in repo.pulls
            )
        if duplicate:
            raise _ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {repo.owner.login}:{head_ref}.",
                    }
                ],
                documentation_url=_DOC_CREATE_PULL,
            )
        ahead = await asyncio.to_thread(self._ahead, repo.path, branches[base], branches[head_ref])
        if ahead == 0:
            raise _ApiError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base} and {head_ref}",
                    }
                ],
                documentation_url=_DOC_CREATE_PULL,
            )
        now = _now()
        with self._lock:
            pull = _Pull(
                id=next(self._ids),
                number=len(repo.pulls) + 1,
                title=title,
                body=text,
                head=head_ref,
                base=base,
                head_sha=branches[head_ref],
                base_sha=branches[base],
                state="open",
                draft=draft,
                user=user,
                created_at=now,
                updated_at=now,
            )
            repo.pulls.append(pull)
        data = await asyncio.to_thread(self._pull_json, call, repo, pull, detail=True)
        return _json_response(data, status=201, headers={"Location": data["url"]})

    async def _update_pull(self, call: _Call) -> web.StreamResponse:
        repo, access = self._visible_repo(call)
        user = self._user_of(call)
        pull = self._pull_of(call, repo)
        if access < Access.WRITE and pull.user is not user:
            raise _ApiError(
                403, "Resource not accessible by personal access token", documentation_url=_DOC_UPDATE_PULL
            )
        body = await call.body()
        title = _field(body, "title", str, _DOC_UPDATE_PULL)
        text = _field(body, "body", str, _DOC_UPDATE_PULL)
        state = _field(body, "state", str, _DOC_UPDATE_PULL)
        base = _field(body, "base", str, _DOC_UPDATE_PULL)
        if state is not None and state not in ("open", "closed"):
            raise _ApiError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "invalid", "field": "state"}],
                documentation_url=_DOC_UPDATE_PULL,
            )
        branches = await asyncio.to_thread(self._branches, repo.path)
        if base is not None and base not in branches:
            raise self._pull_invalid("base")
        with self._lock:
            if state == "open" and pull.state == "closed":
                if pull.head not in branches:
                    raise self._pull_invalid("head")
                target = base or pull.base
                if any(
                    other.state == "open" and other.head == pull.head and other.base == target
                    for other in repo.pulls
                ):
                    raise _ApiError(
                        422,
                        "Validation Failed",
                        errors=[
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {pull.label(repo)}.",
                            }
                        ],
                        documentation_url=_DOC_UPDATE_PULL,
                    )
            if title is not None:
                pull.title = title
            if "body" in body:
                pull.body = text
            if base is not None:
                pull.base = base
            if state is not None and state != pull.state:
                pull.state = state
                pull.closed_at = _now() if state == "closed" else None
            self._refresh_pull(pull, branches)
            pull.updated_at = _now()
        data = await asyncio.to_thread(self._pull_json, call, repo, pull, detail=True)
        return _json_response(data)

    async def _get_rate_limit(self, call: _Call) -> web.StreamResponse:
        window = self._window(call.grant, call.request)
        with self._lock:
            core = {
                "limit": window.limit,
                "used": window.used,
                "remaining": max(window.limit - window.used, 0),
                "reset": window.reset,
            }
        search = {
            "limit": SEARCH_RATE_LIMIT,
            "used": 0,
            "remaining": SEARCH_RATE_LIMIT,
            "reset": window.reset,
        }
        graphql = {"limit": window.limit, "used": 0, "remaining": window.limit, "reset": window.reset}
        return _json_response(
            {
                "resources": {"core": core, "search": search, "graphql": graphql},
                "rate": core,
            }
        )

    # --- Git over smart HTTP ----------------------------------------------------------------------------

    async def _handle_git(
        self,
        request: web.Request,
        match: re.Match[str],
        token: str | None,
        grant: TokenGrant | None,
        malformed: bool,
    ) -> web.StreamResponse:
        service_path = match["service"]
        service = request.query.get("service", "") if service_path == "info/refs" else service_path
        if service not in _GIT_SERVICES or (service_path == "info/refs" and request.method != "GET"):
            # GitHub serves only the smart protocol; the dumb one (plain info/refs) is refused.
            return web.Response(status=403, text="Please upgrade your git client.\n")
        if service_path != "info/refs" and request.method != "POST":
            return web.Response(status=405, text="Method Not Allowed\n")
        challenge = web.Response(
            status=401,
            text="Invalid username or password.\n" if token else "Authentication required.\n",
            headers={"WWW-Authenticate": 'Basic realm="GitHub"'},
        )
        if malformed or (token is not None and grant is None):
            return challenge
        with self._lock:
            repo = self._repos.get(f"{match['owner']}/{match['repo']}".lower())
        access = self._access(grant, repo) if repo is not None else None
        pushing = service == "git-receive-pack"
        # Anonymous requests for private or missing repositories get a challenge, never a hint of existence.
        if grant is None and (repo is None or access is None or pushing):
            return challenge
        if repo is None or access is None:
            return web.Response(status=404, text="Repository not found.\n")
        assert grant is not None or not pushing
        if pushing and access < Access.WRITE:
            assert grant is not None
            return web.Response(
                status=403, text=f"Permission to {repo.full_name}.git denied to {grant.login}.\n"
            )
        response = await self._run_http_backend(request, repo, service_path, grant)
        if pushing and service_path == "git-receive-pack" and response.status == 200:
            with self._lock:
                repo.pushed_at = repo.updated_at = _now()
        return response

    async def _run_http_backend(
        self, request: web.Request, repo: _Repo, service_path: str, grant: TokenGrant | None
    ) -> web.Response:
        """Run ``git http-backend`` as a CGI for one request and relay its answer."""
        # aiohttp has already undone Content-Encoding: gzip and chunked transfer, so the body is plain.
        body = await request.read() if request.method == "POST" else b""
        relative = repo.path.relative_to(self._repos_root).as_posix()
        env = self._git_env(
            {
                "GIT_PROJECT_ROOT": str(self._repos_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "REQUEST_METHOD": request.method,
                "PATH_INFO": f"/{relative}/{service_path}",
                "QUERY_STRING": request.query_string,
                "CONTENT_TYPE": request.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": request.remote or "127.0.0.1",
                # http-backend refuses receive-pack to anonymous users unless told; auth happened above.
                "REMOTE_USER": grant.login if grant else "",
                # Protocol v2 (and with it shallow fetches as modern git does them) rides on this header.
                "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            }
        )
        process = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(body), GIT_TIMEOUT_SECONDS)
        except TimeoutError:
            message = f"GitHub stand-in: git http-backend took longer than {GIT_TIMEOUT_SECONDS}s\n"
            return web.Response(status=504, text=message)
        finally:
            if process.returncode is None:
                process.kill()
                with contextlib.suppress(ProcessLookupError):
                    await process.wait()
        return _cgi_response(stdout, stderr)


def _cgi_response(stdout: bytes, stderr: bytes) -> web.Response:
    """Turn a CGI answer (headers, blank line, body) into an HTTP response."""
    ends = [(stdout.find(marker), len(marker)) for marker in (b"\r\n\r\n", b"\n\n")]
    found = [(index, size) for index, size in ends if index >= 0]
    if not found:
        message = f"git http-backend gave no CGI headers: {stderr.decode(errors='replace').strip()}\n"
        return web.Response(status=500, text=message)
    index, size = min(found)
    status = 200
    headers: dict[str, str] = {}
    for line in stdout[:index].decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            headers[name.strip()] = value.strip()
    return web.Response(status=status, body=stdout[index + size :], headers=headers)


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
