"""Run real worker turns against the local stand-ins: Slack, scripted Claude, GitHub and a session store.

Used by the worker's integration tests, its benchmark and (later) the offline demo::

    with WorkerWorld(tmp_path) as world:
        world.seed_repository(world.slack.human, {"app.py": "...", "test_app.py": "..."})
        thread = world.new_thread("@peerbot fix the failing test")
        world.claude.load([Reply.view(...), Reply.text("Done.")])
        run = asyncio.run(world.run_turn(thread))
        assert run.result.outcome == "done"

Every turn gets a fresh workspace folder (as a new pod would), the same session store and the same
stand-ins, so a test can run turn after turn of one thread, or kill one and start the next.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from peerbot.naming import conversation_name, user_repository_name
from peerbot.result import TurnResult
from peerbot.session.format import SessionKey
from peerbot.session.local import LocalSessionStore
from peerbot.session.store import SessionStore
from peerbot.settings import WorkerSettings, load_settings
from peerbot.testing.claude import ScriptedClaude
from peerbot.testing.github import Access, GitHubStandIn, TokenGrant
from peerbot.testing.slack import SlackStandIn
from peerbot.worker.pointers import TurnPointers, load_pointers
from peerbot.worker.timing import Clock

ORGANIZATION: Final = "peerbot-community"
#: The worker's GitHub token in the stand-in (write access to the organisation).
GITHUB_TOKEN: Final = "ghp_worldworker000000000000000000000000000"  # noqa: S105 (a stand-in token)
GITHUB_LOGIN: Final = "peerbot-bot"
#: Prompts shorter than this are not cached by the scripted Claude; Peerbot's prefix is about 700 tokens,
#: so the world lowers the real minimum (1,024) to see cache hits in small tests.
MIN_CACHEABLE_TOKENS: Final = 200
#: The credential helper the world's own git commands use (reads the token from the environment).
_HELPER: Final = '!f() { test "$1" = get || exit 0; echo username=x; echo "password=$WORLD_GIT_TOKEN"; }; f'


async def instant_sleep(_seconds: float) -> None:
    """A retry wait that does not wait (tests of retries stay fast); still yields to the event loop."""
    await asyncio.sleep(0)


@dataclass(frozen=True)
class Thread:
    """A Slack thread a person started."""

    team: str
    channel: str
    ts: str
    user: str

    @property
    def conversation(self) -> str:
        return conversation_name(self.team, self.channel, self.ts)

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.team, self.channel, self.ts)


@dataclass
class TurnRun:
    """What one worker turn left behind."""

    result: TurnResult | None
    exit_code: int
    document: str | None
    workspace: Path
    seconds: float
    slack_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerWorld:
    """Slack, scripted Claude and GitHub stand-ins plus a session store, for running worker turns.

    Args:
        root: a folder for workspaces, the local session store and git's home.
        store: the session store (default: a local folder under ``root``).
        min_cacheable_tokens: the scripted Claude's prompt-cache minimum.
    """

    def __init__(
        self,
        root: Path,
        *,
        store: SessionStore | None = None,
        min_cacheable_tokens: int = MIN_CACHEABLE_TOKENS,
    ) -> None:
        self.root = root
        self.slack = SlackStandIn()
        self.claude = ScriptedClaude(min_cacheable_tokens=min_cacheable_tokens)
        self.github = GitHubStandIn(
            organizations=[ORGANIZATION],
            tokens=[TokenGrant(GITHUB_TOKEN, GITHUB_LOGIN, organizations={ORGANIZATION: Access.WRITE})],
        )
        self.store = store or LocalSessionStore(root / "sessions", durable=False)
        self._turns = itertools.count(1)
        self._github_client: Any = None

    def start(self) -> Self:
        self.slack.start()
        self.claude.start()
        self.github.start()
        return self

    def stop(self) -> None:
        if self._github_client is not None:
            self._github_client.close()
        self.github.stop()
        self.claude.stop()
        self.slack.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- GitHub -------------------------------------------------------------------------------------------

    def github_client(self) -> Any:
        """A PyGithub client for the stand-in, without retries or pauses (shared by the world's turns)."""
        if self._github_client is None:
            from github import Auth, Github

            self._github_client = Github(
                base_url=self.github.api_url,
                auth=Auth.Token(GITHUB_TOKEN),
                retry=None,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        return self._github_client

    def user_repository(self, user: str) -> str:
        return f"{ORGANIZATION}/{user_repository_name(user)}"

    def seed_repository(self, user: str, files: Mapping[str, str], *, full_name: str | None = None) -> str:
        """Create a repository (the user's own by default) whose default branch holds ``files``."""
        full_name = full_name or self.user_repository(user)
        self.github.create_repository(full_name, private=True, auto_init=True)
        with tempfile.TemporaryDirectory(prefix="peerbot-seed-") as folder:
            clone = Path(folder) / "clone"
            self._git("clone", self.github.clone_url(full_name), str(clone), cwd=Path(folder))
            for name, content in files.items():
                path = clone / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
            self._git("add", "-A", cwd=clone)
            self._git("commit", "-q", "-m", "Seed", cwd=clone)
            self._git("push", "-q", "origin", "HEAD", cwd=clone)
        return full_name

    def _git(self, *args: str, cwd: Path) -> str:
        home = self.root / "git-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "WORLD_GIT_TOKEN": GITHUB_TOKEN,
            "GIT_AUTHOR_NAME": "Seed",
            "GIT_AUTHOR_EMAIL": "seed@example.com",
            "GIT_COMMITTER_NAME": "Seed",
            "GIT_COMMITTER_EMAIL": "seed@example.com",
        }
        command = ["git", "-c", f"credential.helper={_HELPER}", *args]
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    # --- Slack --------------------------------------------------------------------------------------------

    def new_thread(
        self, text: str, *, user: str | None = None, files: Iterable[tuple[str, bytes]] = ()
    ) -> Thread:
        """A person starts a thread mentioning the bot (``@peerbot`` at the start becomes a real mention)."""
        user = user or self.slack.human
        text = text.replace("@peerbot", self.slack.mention, 1)
        message = self.slack.post_message(user, self.slack.public_channel, text, files=list(files))
        return Thread(self.slack.team_id, self.slack.public_channel, message.ts, user)

    def reply(self, thread: Thread, text: str, *, files: Iterable[tuple[str, bytes]] = ()) -> str:
        """A person replies in the thread; returns the reply's ts."""
        text = text.replace("@peerbot", self.slack.mention, 1)
        message = self.slack.post_message(
            thread.user, thread.channel, text, thread_ts=thread.ts, files=list(files)
        )
        return message.ts

    def post_status_message(self, thread: Thread) -> str:
        """What the dispatcher does: post the status message the worker will edit."""
        from slack_sdk import WebClient

        client = WebClient(token=self.slack.bot_token, base_url=self.slack.api_url)
        response = client.chat_postMessage(channel=thread.channel, thread_ts=thread.ts, text="👀 Starting…")
        return str(response["ts"])

    # --- running a turn -----------------------------------------------------------------------------------

    def settings(self, workspace: Path, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "slack_bot_token": self.slack.bot_token,
            "slack_api_url": self.slack.api_url,
            "anthropic_api_key": self.claude.api_key,
            "anthropic_base_url": self.claude.url,
            "github_token": GITHUB_TOKEN,
            "github_api_url": self.github.api_url,
            "github_organization": ORGANIZATION,
            "session_store": "local",
            "session_dir": self.root / "sessions",
            "workspace_dir": workspace,
            "peerbot_result_file": workspace.parent / f"{workspace.name}.result.json",
            "tool_timeout_seconds": 30,
            "log_format": "console",
        }
        values.update(overrides)
        return load_settings(WorkerSettings, **values)

    def pointers(
        self,
        thread: Thread,
        *,
        requested_ts: str | None = None,
        answered_ts: str | None = None,
        status_ts: str | None = None,
        deadline: datetime | None = None,
        turn: int = 1,
        repository: str | None = None,
    ) -> TurnPointers:
        return load_pointers(
            peerbot_conversation=thread.conversation,
            peerbot_turn=turn,
            peerbot_team=thread.team,
            peerbot_channel=thread.channel,
            peerbot_thread_ts=thread.ts,
            peerbot_user=thread.user,
            peerbot_requested_ts=requested_ts or thread.ts,
            peerbot_answered_ts=answered_ts,
            peerbot_repository=repository,
            peerbot_status_message_ts=status_ts,
            peerbot_deadline=deadline,
        )

    def new_workspace(self) -> Path:
        workspace = self.root / "workspaces" / f"turn-{next(self._turns)}"
        if workspace.exists():
            shutil.rmtree(workspace)
        workspace.mkdir(parents=True)
        return workspace

    async def run_turn(
        self,
        thread: Thread,
        *,
        clock: Clock | None = None,
        fault: Callable[[str], None] | None = None,
        settings: Mapping[str, Any] | None = None,
        store: SessionStore | None = None,
        progress_interval: float = 0.01,
        sleep: Callable[[float], Any] = instant_sleep,
        **pointer_overrides: Any,
    ) -> TurnRun:
        """One worker turn in a fresh workspace; a ``BaseException`` raised by ``fault`` escapes as a kill."""
        from peerbot.worker.main import execute
        from peerbot.worker.turn import Dependencies

        workspace = self.new_workspace()
        worker_settings = self.settings(workspace, **(settings or {}))
        pointers = self.pointers(thread, **pointer_overrides)
        anthropic_client = self.claude.async_client(max_retries=0)
        calls_before = len(self.slack.calls())
        deps = Dependencies(
            store=store or self.store,
            github=self.github_client(),
            anthropic=anthropic_client,
            clock=clock,
            fault=fault,
            env={key: value for key, value in os.environ.items() if key != "PEERBOT_RESULT_FILE"},
            progress_interval=progress_interval,
            sleep=sleep,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            code = await execute(worker_settings, pointers, deps)
        finally:
            await anthropic_client.close()
        result_file = worker_settings.peerbot_result_file
        document = result_file.read_text() if result_file.exists() else None
        return TurnRun(
            result=TurnResult.parse(document),
            exit_code=code,
            document=document,
            workspace=workspace,
            seconds=loop.time() - started,
            slack_calls=len(self.slack.calls()) - calls_before,
        )
