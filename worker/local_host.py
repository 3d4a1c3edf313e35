"""The local repository host: bare git repositories in a folder, for one machine without GitHub.

``peerbot local`` without ``GITHUB_TOKEN`` runs its workers with ``REPOSITORY_HOST=local``; this host then
takes the place of :class:`~peerbot.worker.repository.GitHubHost`, with the same interface
(:meth:`LocalHost.resolve`, :meth:`LocalHost.ensure_pull_request`), so the rest of a turn
(:class:`~peerbot.worker.repository.Checkout`: clone, commit, push) does not know the difference. Under
``REPOSITORIES_DIR``::

    <owner>/<name>.git               a bare repository; the user's own is
                                     <GITHUB_ORGANIZATION>/peerbot-<user id>.git, created on first use
                                     with one commit (a README), as GitHub's auto_init does
    <owner>/<name>.pulls/<n>.json    pull request n: head and base branch, title, description, times
    <owner>/<name>.pulls/<n>.md      the same for people; its path is what the thread shows as the link

A thread naming ``repo=owner/name`` works in ``<owner>/<name>.git``, which must exist (a clear error says
where it was looked for and how to make one). Pull requests behave as the worker uses GitHub's: one open
draft per branch, opened at the first push with a title, its description brought up to date by every
later turn, refused when the branch or the base is not in the repository.

The host is sync (``git`` plumbing via :mod:`subprocess`, small files); the worker calls it in a thread.
Every git command runs with the worker's safe configuration (no hooks, no system or global config) and
no credentials: there are none to give.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from peerbot.conversation import REPOSITORY_PATTERN
from peerbot.naming import user_repository_name
from peerbot.result import ErrorKind
from peerbot.worker.errors import RepositoryFailure
from peerbot.worker.repository import (
    BODY_LIMIT,
    GIT_TIMEOUT_SECONDS,
    SAFE_CONFIG,
    TITLE_LIMIT,
    Git,
    PullRequest,
    RepoInfo,
)

#: The default branch of a repository this host creates (GitHub's default for new repositories).
DEFAULT_BRANCH: Final = "main"
#: The suffix of a bare repository's folder, as ``git clone --bare`` names it.
BARE_SUFFIX: Final = ".git"
#: The suffix of the folder next to a bare repository that holds its pull request records.
PULLS_SUFFIX: Final = ".pulls"
#: The format of a pull request record (``schemaVersion``); a record of another version is refused.
PULL_SCHEMA_VERSION: Final = 1
#: Taken (``flock``) while pull requests are read and written, so two workers never give out one number.
PULLS_LOCK: Final = ".lock"
#: A pull request record file: ``<number>.json``.
_PULL_FILE: Final = re.compile(r"^([1-9][0-9]*)\.json$")


@dataclass(frozen=True)
class LocalRepoInfo(RepoInfo):
    """A local repository: ``html_url`` is the bare repository's path, which is also its branches' address
    (a path cannot point into a branch; the thread shows the branch's name with it)."""

    def branch_url(self, branch: str) -> str:
        return self.html_url


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class LocalGitError(Exception):
    """A git command of the local host failed; the message holds the command and git's own words."""


class LocalHost:
    """Bare git repositories under ``root`` (``REPOSITORIES_DIR``), in place of GitHub (see the module).

    Args:
        root: the folder of bare repositories (created when missing).
        organization: the owner of the users' own repositories (``GITHUB_ORGANIZATION``).
        env: the environment git runs with (``PATH``, ``HOME``); cleaned as for the worker's own git.
        now: the clock of pull request records.
    """

    def __init__(
        self,
        root: Path,
        organization: str,
        *,
        env: Mapping[str, str] | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.root = root.expanduser().resolve()
        self.organization = organization
        base = env if env is not None else {"PATH": os.environ.get("PATH", os.defpath)}
        self.env = Git(env=base, redact=str).env
        self.now = now

    # --- repositories -------------------------------------------------------------------------------------

    def repository_path(self, full_name: str) -> Path:
        """Where ``owner/name`` lives: ``<root>/<owner>/<name>.git`` (a trailing ``.git`` is ignored)."""
        if full_name.endswith(BARE_SUFFIX):
            full_name = full_name[: -len(BARE_SUFFIX)]
        owner, _, name = full_name.partition("/")
        if not re.match(REPOSITORY_PATTERN, full_name) or name.startswith("."):
            raise RepositoryFailure(
                ErrorKind.INPUT,
                f"`{full_name}` is not a repository name.",
                "Name a repository as `repo=owner/name` (letters, digits, `.`, `-` and `_`; the name does "
                "not start with a dot).",
            )
        return self.root / owner / f"{name}{BARE_SUFFIX}"

    def resolve(self, wanted: str | None, user_id: str, branch: str) -> RepoInfo:
        """The repository to work in: ``wanted`` (``owner/name``, must exist) or the user's own (created)."""
        full_name = wanted or f"{self.organization}/{user_repository_name(user_id)}"
        path = self.repository_path(full_name)
        full_name = f"{path.parent.name}/{path.name[: -len(BARE_SUFFIX)]}"
        created = False
        if not path.exists():
            if wanted is not None:
                raise RepositoryFailure(
                    ErrorKind.REPOSITORY,
                    f"I can't find the local repository `{full_name}`: there is no `{path}`.",
                    "Check the name (`repo=owner/name`): local repositories are the bare git repositories "
                    f"in `{self.root}`, at `<owner>/<name>.git`. Make one with `git init --bare {path}` (or "
                    f"`git clone --bare <url> {path}`), or leave out `repo=` to work in your own Peerbot "
                    "repository.",
                )
            created = self._create(path, user_id)
        try:
            if self._git(path, "rev-parse", "--is-bare-repository") != "true":
                raise LocalGitError("not a bare repository")
            default_branch = self._git(path, "symbolic-ref", "--short", "HEAD")
            empty = not self._has_branch(path, default_branch)
            branch_exists = not empty and self._has_branch(path, branch)
        except LocalGitError as error:
            raise RepositoryFailure(
                ErrorKind.REPOSITORY,
                f"`{path}` is not a bare git repository I can work in.",
                f"Make it one (`git clone --bare <repository> {path}`), or name another with "
                "`repo=owner/name`.",
                detail=str(error),
            ) from error
        return LocalRepoInfo(
            full_name=full_name,
            clone_url=path.as_uri(),  # file://: a shallow clone needs a URL (git ignores --depth for paths)
            html_url=str(path),
            default_branch=default_branch,
            private=True,
            empty=empty,
            branch_exists=branch_exists,
            created=created,
        )

    def _create(self, path: Path, user_id: str) -> bool:
        """Make the user's repository with one commit; ``False`` when another worker made it first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built aside, then renamed into place: a repository is never seen half made.
        building = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        name = path.name[: -len(BARE_SUFFIX)]
        try:
            initial = f"--initial-branch={DEFAULT_BRANCH}"
            self._git(building.parent, "init", "-q", "--bare", initial, str(building))
            (building / "description").write_text(f"Peerbot's work for Slack user {user_id}\n")
            readme = (
                f"# {name}\n\nPeerbot's work for Slack user {user_id}: a local repository kept by "
                "`peerbot local`.\n"
            )
            blob = self._git(building, "hash-object", "-w", "--stdin", stdin=readme)
            tree = self._git(building, "mktree", stdin=f"100644 blob {blob}\tREADME.md\n")
            commit = self._git(building, "commit-tree", tree, "-m", "Initial commit")
            self._git(building, "update-ref", f"refs/heads/{DEFAULT_BRANCH}", commit)
            try:
                building.rename(path)
            except OSError:
                if path.exists():
                    return False  # another worker made it a moment ago: use theirs
                raise
            return True
        except (OSError, LocalGitError) as error:
            raise RepositoryFailure(
                ErrorKind.REPOSITORY,
                f"I could not create your local repository `{path}`.",
                "A Peerbot administrator should check that REPOSITORIES_DIR is a writable folder and that "
                "git is installed; then reply here to try again.",
                detail=str(error),
            ) from error
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def _has_branch(self, path: Path, branch: str) -> bool:
        try:
            self._git(path, "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}")
        except LocalGitError:
            return False
        return True

    def _git(self, cwd: Path, *args: str, stdin: str | None = None) -> str:
        command = ["git"]
        for setting in SAFE_CONFIG:
            command += ["-c", setting]
        try:
            done = subprocess.run(
                [*command, *args],
                cwd=cwd,
                env=self.env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LocalGitError(f"git {' '.join(args)} failed: {error}") from error
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise LocalGitError(f"git {' '.join(args)} failed (exit {done.returncode}): {output}")
        return done.stdout.strip()

    # --- pull requests ------------------------------------------------------------------------------------

    def pulls_dir(self, full_name: str) -> Path:
        """The folder of ``owner/name``'s pull request records (next to the bare repository)."""
        path = self.repository_path(full_name)
        return path.parent / f"{path.name[: -len(BARE_SUFFIX)]}{PULLS_SUFFIX}"

    def pull_requests(self, full_name: str) -> list[dict[str, Any]]:
        """Every pull request record of ``owner/name``, by number."""
        folder = self.pulls_dir(full_name)
        if not folder.is_dir():
            return []
        return [self._read_pull(file) for _, file in sorted(self._pull_files(folder))]

    def ensure_pull_request(self, info: RepoInfo, branch: str, *, title: str, body: str) -> PullRequest:
        """Open a draft pull request from ``branch`` (the first time), or bring its description up to date.

        Returns the pull request with the path of its Markdown page as its URL.
        """
        path = self.repository_path(info.full_name)
        for needed in (branch, info.default_branch):
            if not self._has_branch(path, needed):
                # GitHub answers 422 for a head or base that is not in the repository: so does this host.
                raise RepositoryFailure(
                    ErrorKind.REPOSITORY,
                    f"I could not open a pull request in `{info.full_name}`: it has no branch `{needed}`.",
                    "Reply here to try again: the next turn pushes the branch again.",
                )
        folder = self.pulls_dir(info.full_name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with self._locked(folder):
                now = _timestamp(self.now())
                files = sorted(self._pull_files(folder))
                for _, file in files:
                    record = self._read_pull(file)
                    if record["head"] == branch and record["state"] == "open":
                        record.update(body=body[:BODY_LIMIT], updatedAt=now)
                        return self._write_pull(folder, record, created=False)
                number = (files[-1][0] if files else 0) + 1
                record = {
                    "schemaVersion": PULL_SCHEMA_VERSION,
                    "number": number,
                    "repository": info.full_name,
                    "head": branch,
                    "base": info.default_branch,
                    "title": title[:TITLE_LIMIT],
                    "body": body[:BODY_LIMIT],
                    "draft": True,
                    "state": "open",
                    "createdAt": now,
                    "updatedAt": now,
                }
                return self._write_pull(folder, record, created=True)
        except (OSError, ValueError) as error:
            raise RepositoryFailure(
                ErrorKind.REPOSITORY,
                f"I could not write the pull request record of `{info.full_name}` in `{folder}`.",
                "A Peerbot administrator should check that REPOSITORIES_DIR is writable and that the records "
                "there are intact; then reply here to try again.",
                detail=f"{type(error).__name__}: {error}",
            ) from error

    @staticmethod
    def _pull_files(folder: Path) -> Iterator[tuple[int, Path]]:
        for file in folder.iterdir():
            found = _PULL_FILE.match(file.name)
            if found:
                yield int(found.group(1)), file

    @staticmethod
    def _read_pull(file: Path) -> dict[str, Any]:
        record = json.loads(file.read_text())
        if not isinstance(record, dict) or record.get("schemaVersion") != PULL_SCHEMA_VERSION:
            raise ValueError(f"{file} is not a pull request record of version {PULL_SCHEMA_VERSION}")
        return record

    def _write_pull(self, folder: Path, record: dict[str, Any], *, created: bool) -> PullRequest:
        number = int(record["number"])
        page = folder / f"{number}.md"
        _replace(page, self._page(record))
        _replace(folder / f"{number}.json", json.dumps(record, indent=2) + "\n")
        return PullRequest(number, str(page), created=created)

    def _page(self, record: Mapping[str, Any]) -> str:
        """The pull request for people: what, from where to where, how to look at it, the description."""
        repository = self.repository_path(str(record["repository"]))
        head, base = record["head"], record["base"]
        state = f"{record['state']}{' (draft)' if record.get('draft') else ''}"
        return (
            f"# {record['title']}\n\n"
            f"Pull request #{record['number']} of `{record['repository']}` ({repository}), "
            "kept by Peerbot.\n\n"
            f"- from `{head}` into `{base}`, {state}\n"
            f"- opened {record['createdAt']}, updated {record['updatedAt']}\n\n"
            "To look at the changes:\n\n"
            "```sh\n"
            f"git clone --branch {head} {repository}\n"
            f"git diff origin/{base}...HEAD  # in the clone\n"
            "```\n\n"
            "---\n\n"
            f"{record['body']}\n"
        )

    @staticmethod
    @contextlib.contextmanager
    def _locked(folder: Path) -> Iterator[None]:
        with open(folder / PULLS_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a temporary file first, then ``os.replace``."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
