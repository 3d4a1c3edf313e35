"""The user's repository: found or created on GitHub, cloned shallowly, committed, pushed, pull request kept.

Two halves:

- :class:`GitHubHost` (PyGithub, sync; the worker calls it in a thread): get or create the Slack user's
  private repository in ``GITHUB_ORGANIZATION`` (named from the immutable user id by
  :func:`peerbot.naming.user_repository_name`), or get the repository a thread names; open a draft pull
  request on the first push and keep its description current. Errors become :class:`RepositoryFailure`
  with words a person can act on (a missing repository and one the token cannot see look the same on
  GitHub: both are 404).
- :class:`Checkout` (the real ``git`` CLI, async): a shallow clone of the thread's branch (or of the default
  branch, from which the thread's branch starts), commit everything, push.

On one machine without a GitHub token, :class:`peerbot.worker.local_host.LocalHost` takes the place of
:class:`GitHubHost` (bare repositories in a folder; same interface); :class:`Checkout` and :class:`Git`
work the same against it, with no token at all.

**The token never lands in a URL, a file or a log.** git gets it from a credential helper that reads it
from an environment variable set only for the commands that talk to GitHub (clone, push). The helper is
scoped to GitHub's own scheme and host and every other helper is switched off, so a remote rewritten by
the agent (``url.<x>.insteadOf`` in the repository's config) never receives it. Hooks, fsmonitor and the
``ext::`` transport are switched off for Peerbot's own git commands, so nothing the agent wrote into the
clone runs with the token in its environment. Remote URLs in ``.git/config`` stay plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from peerbot.naming import user_repository_name
from peerbot.result import ErrorKind
from peerbot.worker.errors import RepositoryFailure

if TYPE_CHECKING:
    from github import Github

#: The environment variable the credential helper reads; set only for git commands that need it.
TOKEN_VARIABLE: Final = "PEERBOT_GIT_TOKEN"  # noqa: S105 (the variable's name, not a token)
#: Answers git's "get" with the token from the environment; ignores "store" and "erase".
CREDENTIAL_HELPER: Final = (
    '!f() { test "$1" = get || exit 0; echo username=x-access-token; '
    f'echo "password=${TOKEN_VARIABLE}"; }}; f'
)
#: Commits are authored by Peerbot (GitHub shows them with this name).
AUTHOR_NAME: Final = "Peerbot"
AUTHOR_EMAIL: Final = "peerbot@users.noreply.github.com"
#: A clone or push of a big repository can take a while; longer than this is an outage, not a slow day.
GIT_TIMEOUT_SECONDS: Final = 180.0
#: Pull request titles are cut to this length (GitHub allows 256; a short one reads better).
TITLE_LIMIT: Final = 72
#: GitHub refuses pull request bodies over 65,536 characters; stay well below.
BODY_LIMIT: Final = 60_000
#: Configuration for every git command Peerbot runs: no hooks, no fsmonitor, no ext:: transport, no
#: signing, no pager; an identity for commits.
SAFE_CONFIG: Final = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "protocol.ext.allow=never",
    "commit.gpgsign=false",
    "core.pager=cat",
    f"user.name={AUTHOR_NAME}",
    f"user.email={AUTHOR_EMAIL}",
)


@dataclass(frozen=True)
class RepoInfo:
    """A repository as the worker needs it."""

    full_name: str
    clone_url: str
    html_url: str
    default_branch: str
    private: bool
    empty: bool
    branch_exists: bool
    created: bool = False

    def branch_url(self, branch: str) -> str:
        return f"{self.html_url}/tree/{branch}"


@dataclass(frozen=True)
class PullRequest:
    """A pull request the worker opened or updated."""

    number: int
    url: str
    created: bool


def _github_failure(error: Exception, full_name: str, *, action: str) -> RepositoryFailure:
    """Turn a PyGithub or network error into words for the person."""
    from github import (
        BadCredentialsException,
        GithubException,
        RateLimitExceededException,
        UnknownObjectException,
    )

    if isinstance(error, UnknownObjectException):
        return RepositoryFailure(
            ErrorKind.REPOSITORY,
            f"I can't find the repository `{full_name}`, or Peerbot's GitHub account has no access to it.",
            "Check the name (`repo=owner/name`, as on GitHub). For a private repository, give Peerbot's "
            "GitHub account access to it; or leave out `repo=` to work in your own Peerbot repository.",
        )
    if isinstance(error, BadCredentialsException):
        return RepositoryFailure(
            ErrorKind.GITHUB,
            "GitHub refused Peerbot's token.",
            "A Peerbot administrator must renew GITHUB_TOKEN (the worker Secret).",
        )
    if isinstance(error, RateLimitExceededException):
        return RepositoryFailure(
            ErrorKind.GITHUB,
            "GitHub is rate-limiting Peerbot right now.",
            "Wait a few minutes, then reply in this thread to try again.",
        )
    if isinstance(error, GithubException) and error.status in (403, 422):
        message = error.data.get("message") if isinstance(error.data, dict) else None
        return RepositoryFailure(
            ErrorKind.REPOSITORY,
            f"GitHub did not let Peerbot {action} `{full_name}` ({message or error.status}).",
            "Give Peerbot's GitHub account write access to the repository, or name another one with "
            "`repo=owner/name`.",
        )
    status = getattr(error, "status", None)
    return RepositoryFailure(
        ErrorKind.GITHUB,
        f"GitHub is not answering properly ({status or type(error).__name__}) while I {action} "
        f"`{full_name}`.",
        "This is usually temporary: reply in this thread in a few minutes to try again. "
        "https://www.githubstatus.com says whether GitHub has an incident.",
        detail=f"{type(error).__name__}: {error}",
        transient=True,
    )


class GitHubHost:
    """The GitHub side of a thread's repository (PyGithub; sync, so call it in a thread)."""

    def __init__(self, client: Github, organization: str) -> None:
        self.client = client
        self.organization = organization

    def resolve(self, wanted: str | None, user_id: str, branch: str) -> RepoInfo:
        """The repository to work in: ``wanted`` (``owner/name``) or the user's own (created if missing)."""
        from github import GithubException, UnknownObjectException

        full_name = wanted or f"{self.organization}/{user_repository_name(user_id)}"
        created = False
        try:
            try:
                repo = self.client.get_repo(full_name)
            except UnknownObjectException:
                if wanted is not None:
                    raise
                repo, created = self._create_user_repository(user_id), True
            empty = False
            try:
                repo.get_branch(repo.default_branch)
            except GithubException as error:
                if error.status != 404:
                    raise
                empty = True
            branch_exists = False
            if not empty:
                try:
                    repo.get_branch(branch)
                    branch_exists = True
                except GithubException as error:
                    if error.status != 404:
                        raise
        except Exception as error:
            if isinstance(error, RepositoryFailure):
                raise
            raise _github_failure(error, full_name, action="open") from error
        return RepoInfo(
            full_name=repo.full_name,
            clone_url=repo.clone_url,
            html_url=repo.html_url,
            default_branch=repo.default_branch,
            private=bool(repo.private),
            empty=empty,
            branch_exists=branch_exists,
            created=created,
        )

    def _create_user_repository(self, user_id: str) -> Any:
        from github import GithubException

        name = user_repository_name(user_id)
        organization = self.client.get_organization(self.organization)
        try:
            return organization.create_repo(
                name,
                private=True,
                auto_init=True,
                description=f"Peerbot's work for Slack user {user_id}",
            )
        except GithubException as error:
            if error.status == 422:  # another worker created it a moment ago
                return self.client.get_repo(f"{self.organization}/{name}")
            raise

    def ensure_pull_request(self, info: RepoInfo, branch: str, *, title: str, body: str) -> PullRequest:
        """Open a draft pull request from ``branch`` (the first time), or bring its description up to date."""
        try:
            repo = self.client.get_repo(info.full_name)
            owner = info.full_name.split("/", 1)[0]
            for pull in repo.get_pulls(state="open", head=f"{owner}:{branch}"):
                pull.edit(body=body[:BODY_LIMIT])
                return PullRequest(pull.number, pull.html_url, created=False)
            pull = repo.create_pull(
                base=info.default_branch,
                head=branch,
                title=title[:TITLE_LIMIT],
                body=body[:BODY_LIMIT],
                draft=True,
            )
            return PullRequest(pull.number, pull.html_url, created=True)
        except Exception as error:
            raise _github_failure(error, info.full_name, action="open a pull request in") from error


class GitCommandError(Exception):
    """A git command failed; the message (redacted) holds the command and git's own words."""

    def __init__(self, args: tuple[str, ...], code: int | None, output: str) -> None:
        self.args_run = args
        self.code = code
        self.output = output
        super().__init__(
            f"git {' '.join(args)} failed ({'timed out' if code is None else f'exit {code}'}): {output}"
        )


class Git:
    """Runs git with Peerbot's safe configuration; the token (if any) only for commands that need it."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        token: str = "",
        redact: Callable[[str], str],
        timeout_seconds: float = GIT_TIMEOUT_SECONDS,
    ) -> None:
        self.env = {
            **env,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
        }
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG", TOKEN_VARIABLE):
            self.env.pop(name, None)
        self._token = token
        self.redact = redact
        self.timeout_seconds = timeout_seconds

    @staticmethod
    def _credential_config(url: str) -> list[str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        # An empty helper value resets the list, so only ours runs, and only for GitHub's own origin.
        return ["-c", "credential.helper=", "-c", f"credential.{origin}.helper={CREDENTIAL_HELPER}"]

    async def run(self, *args: str, cwd: Path, token_for: str | None = None) -> str:
        """Run ``git args`` in ``cwd``; ``token_for`` (a URL) makes the token available for that origin.

        With no token (the local repository host, :mod:`peerbot.worker.local_host`) no credential helper
        is set up at all: there is nothing to hand over.
        """
        command = ["git"]
        for setting in SAFE_CONFIG:
            command += ["-c", setting]
        env = dict(self.env)
        if token_for is not None and self._token:
            command += self._credential_config(token_for)
            env[TOKEN_VARIABLE] = self._token
        command += list(args)
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(self.timeout_seconds):
                output, _ = await process.communicate()
        except TimeoutError:
            await self._kill(process)
            raise GitCommandError(tuple(args), None, "no answer in time") from None
        except asyncio.CancelledError:
            await self._kill(process)
            raise
        text = self.redact(output.decode(errors="replace").strip())
        if process.returncode != 0:
            raise GitCommandError(tuple(args), process.returncode, text)
        return text

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class Checkout:
    """The thread's branch of one repository, cloned into ``repo_dir``."""

    def __init__(self, git: Git, info: RepoInfo, branch: str, repo_dir: Path) -> None:
        self.git = git
        self.info = info
        self.branch = branch
        self.repo_dir = repo_dir
        self.start_sha: str | None = None

    async def clone(self) -> None:
        """A shallow clone: the thread's branch if it exists, else the default branch, then a new branch."""
        self.repo_dir.parent.mkdir(parents=True, exist_ok=True)
        url = self.info.clone_url
        try:
            if self.info.branch_exists:
                await self.git.run(
                    "clone",
                    "--depth",
                    "1",
                    "--no-tags",
                    "--single-branch",
                    "--branch",
                    self.branch,
                    url,
                    str(self.repo_dir),
                    cwd=self.repo_dir.parent,
                    token_for=url,
                )
            else:
                await self.git.run(
                    "clone",
                    "--depth",
                    "1",
                    "--no-tags",
                    url,
                    str(self.repo_dir),
                    cwd=self.repo_dir.parent,
                    token_for=url,
                )
                await self.git.run("checkout", "-q", "-b", self.branch, cwd=self.repo_dir)
        except GitCommandError as error:
            raise RepositoryFailure(
                ErrorKind.GITHUB,
                f"I could not clone `{self.info.full_name}`.",
                "This is usually temporary: reply in this thread in a few minutes to try again. If it keeps "
                "failing, check that Peerbot's GitHub account can read the repository.",
                detail=error.output,
                transient=True,
            ) from error
        self.start_sha = await self.head()

    async def head(self) -> str | None:
        """The commit checked out (``None`` in an empty repository)."""
        try:
            return (await self.git.run("rev-parse", "--verify", "-q", "HEAD", cwd=self.repo_dir)) or None
        except GitCommandError:
            return None

    async def commit_all(self, message: str) -> bool:
        """Commit every change in the working tree; ``False`` when there was nothing to commit."""
        await self.git.run("add", "-A", cwd=self.repo_dir)
        status = await self.git.run("status", "--porcelain", cwd=self.repo_dir)
        if not status.strip():
            return False
        await self.git.run("commit", "-q", "--no-verify", "-m", message, cwd=self.repo_dir)
        return True

    async def unpushed(self) -> bool:
        """Whether HEAD holds commits the remote branch does not have yet."""
        head = await self.head()
        if head is None:
            return False
        try:
            remote = await self.git.run(
                "rev-parse", "--verify", "-q", f"refs/remotes/origin/{self.branch}", cwd=self.repo_dir
            )
        except GitCommandError:
            return head != self.start_sha  # the branch is not on GitHub yet: anything committed is new
        return remote != head

    async def push(self) -> None:
        """Push HEAD to the thread's branch (fast-forward only)."""
        url = self.info.clone_url
        await self.git.run(
            "push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.repo_dir, token_for=url
        )
        # Remember what the remote has now, so unpushed() is right without another fetch.
        await self.git.run("update-ref", f"refs/remotes/origin/{self.branch}", "HEAD", cwd=self.repo_dir)

    async def patch(self) -> str:
        """The commits not on the remote as a patch (``git am`` applies it), for when a push fails."""
        if self.start_sha:
            return await self.git.run(
                "format-patch", "--stdout", f"{self.start_sha}..HEAD", cwd=self.repo_dir
            )
        return await self.git.run("format-patch", "--stdout", "--root", "HEAD", cwd=self.repo_dir)

    async def changed_files(self) -> list[str]:
        """Files changed on the branch since the clone (for the pull request description)."""
        if not self.start_sha:
            return []
        output = await self.git.run("diff", "--name-only", f"{self.start_sha}..HEAD", cwd=self.repo_dir)
        return [line for line in output.splitlines() if line.strip()]
