"""Settings of ``peerbot local``: its own, the dispatcher's and the workers', all checked before starting.

Values come from the environment, then from a ``.env`` file in the current folder (the environment wins;
:func:`read_env_file`). A person trying Peerbot for the first time most likely has no tokens yet, so a
missing token is not reported one variable at a time: :func:`load_config` raises one
:class:`LocalSetupError` listing every token still missing, where to get each, and that ``peerbot demo``
needs none of them. Malformed values are reported the same way, one line each, with the fix.

``GITHUB_TOKEN`` is optional: without it, workers keep repositories in local git repositories under
``PEERBOT_LOCAL_DIR/repositories`` (``REPOSITORY_HOST=local``; :func:`local_repositories`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import Field

from peerbot import constants
from peerbot.settings import (
    DispatcherSettings,
    PeerbotSettings,
    SettingsError,
    WorkerSettings,
    load_settings,
)

#: The file settings are read from when the environment does not have them.
ENV_FILE: Final = ".env"
#: Several turns at once on one laptop: each is a Python process, a clone and the agent's commands.
DEFAULT_MAX_CONCURRENT_TURNS: Final = 2

#: Every token ``peerbot local`` needs, and where a person gets it.
TOKENS: Final[dict[str, str]] = {
    "SLACK_BOT_TOKEN": (
        "the bot token (xoxb-...): your Slack app's 'OAuth & Permissions' page, after 'Install to "
        "Workspace' (create the app at https://api.slack.com/apps from slack-app-manifest.yaml)"
    ),
    "SLACK_APP_TOKEN": (
        "an app-level token (xapp-...) with the connections:write scope: your Slack app's 'Basic "
        "Information' page, 'App-Level Tokens' (Socket Mode, so no public URL is needed)"
    ),
    "ANTHROPIC_API_KEY": "an API key (sk-ant-...): https://console.anthropic.com/settings/keys",
}
#: What GITHUB_TOKEN must allow and where to get it. It is optional: with it, repositories are on GitHub;
#: without it, in local git repositories (see :func:`local_repositories`).
GITHUB_HELP: Final = (
    "a token that can create, push to and open pull requests in the repositories of "
    "GITHUB_ORGANIZATION: https://github.com/settings/tokens (fine-grained: Contents, Pull requests "
    "and Administration read/write on that organization)"
)
#: Where, under ``PEERBOT_LOCAL_DIR``, repositories are kept when they stay on this machine.
REPOSITORIES_FOLDER: Final = "repositories"
#: Said when peerbot local cannot start and GITHUB_TOKEN is not set either.
LOCAL_REPOSITORIES_NOTE: Final = (
    f"Optional: GITHUB_TOKEN, {GITHUB_HELP}. Without it, repositories stay in local git repositories "
    f"in PEERBOT_LOCAL_DIR/{REPOSITORIES_FOLDER}."
)
DEMO_NOTE: Final = "No accounts yet? `peerbot demo` shows the whole flow offline and needs none of these."
GUIDE_NOTE: Final = "docs/local.md walks through creating the Slack app and each token."


def _hint(text: str) -> Any:
    """The fix for a setting, printed by :func:`peerbot.settings.load_settings` when it is wrong."""
    return {"hint": text}


class LocalSetupError(Exception):
    """``peerbot local`` cannot start as configured; the message says what to set and where to get it."""


class LocalSettings(PeerbotSettings):
    """What only ``peerbot local`` has (the dispatcher's and the workers' settings are their own)."""

    peerbot_local_dir: Path = Field(
        default=Path(".peerbot"),
        json_schema_extra=_hint(
            "set PEERBOT_LOCAL_DIR to a folder for conversations, sessions and workspaces (default .peerbot)"
        ),
    )
    max_concurrent_jobs: int = Field(
        default=DEFAULT_MAX_CONCURRENT_TURNS,
        ge=0,
        json_schema_extra=_hint("set MAX_CONCURRENT_JOBS to how many turns may run at once (0: no limit)"),
    )
    session_timeout_minutes: int = Field(
        default=constants.DEFAULT_SESSION_TIMEOUT_MINUTES,
        ge=1,
        le=24 * 60,
        json_schema_extra=_hint("set SESSION_TIMEOUT_MINUTES to a whole number of minutes, 1 to 1440"),
    )
    conversation_retention_days: float = Field(
        default=30,
        gt=0,
        json_schema_extra=_hint("set CONVERSATION_RETENTION_DAYS to how long idle Conversations are kept"),
    )
    port: int = Field(
        default=constants.DEFAULT_PORT,
        ge=0,
        le=65535,
        json_schema_extra=_hint(
            "set PORT to the local port for /health, /ready and /metrics (0 picks a free one)"
        ),
    )


@dataclass(frozen=True)
class LocalConfig:
    """Everything ``peerbot local`` runs with, checked."""

    local: LocalSettings
    dispatcher: DispatcherSettings
    worker: WorkerSettings
    #: The environment workers start from: this process's, with the ``.env`` values added.
    environment: Mapping[str, str]
    env_file: Path

    @property
    def folder(self) -> Path:
        return self.local.peerbot_local_dir.expanduser().resolve()


def read_env_file(path: Path) -> list[str]:
    """Add the settings in ``path`` (if it exists) to the environment, without overriding any.

    Returns the names it added. The environment is where every part reads its settings from, and
    workers inherit it, so ``.env`` is read into it once, at start.
    """
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    added = []
    for name, value in dotenv_values(path).items():
        if value is not None and name not in os.environ:
            os.environ[name] = value
            added.append(name)
    return added


def missing_tokens(environ: Mapping[str, str]) -> list[str]:
    """The tokens of :data:`TOKENS` that are unset or empty."""
    return [name for name in TOKENS if not environ.get(name, "").strip()]


def local_repositories(environ: Mapping[str, str]) -> bool:
    """Whether workers keep repositories in local git (``REPOSITORY_HOST=local``) rather than on GitHub.

    ``REPOSITORY_HOST`` decides when it is set; otherwise GitHub when ``GITHUB_TOKEN`` is set, else local.
    """
    host = environ.get("REPOSITORY_HOST", "").strip()
    if host:
        return host == "local"
    return not environ.get("GITHUB_TOKEN", "").strip()


def setup_message(env_file: Path, *, missing: list[str], problems: list[str], local: bool = False) -> str:
    """The one message a person sees when ``peerbot local`` cannot start (see the module docstring).

    ``local``: repositories would stay on this machine (no ``GITHUB_TOKEN``), which is said, with where
    to get the token for GitHub.
    """
    lines = []
    if missing:
        lines.append(f"peerbot local cannot start: set these in the environment or in {env_file}:")
        for name in missing:
            lines.append(f"  - {name}: {TOKENS[name]}")
    if problems:
        lines.append(
            "peerbot local cannot start: these settings need fixing:"
            if not missing
            else "and these settings need fixing:"
        )
        lines.extend(f"  - {problem}" for problem in problems)
    if local:
        lines.append(LOCAL_REPOSITORIES_NOTE)
    lines.append(GUIDE_NOTE)
    lines.append(DEMO_NOTE)
    return "\n".join(lines)


def load_config(env_file: Path) -> LocalConfig:
    """Check every setting ``peerbot local`` and its parts need; :class:`LocalSetupError` if any is wrong."""
    missing = missing_tokens(os.environ)
    local_git = local_repositories(os.environ)
    if missing:
        raise LocalSetupError(setup_message(env_file, missing=missing, problems=[], local=local_git))
    problems: list[str] = []

    def collect(load: type[PeerbotSettings], **overrides: object) -> PeerbotSettings | None:
        try:
            return load_settings(load, **overrides)
        except SettingsError as error:
            problems.extend(problem for problem in error.problems if problem not in problems)
            return None

    local = collect(LocalSettings)
    folder = (local.peerbot_local_dir if isinstance(local, LocalSettings) else Path(".peerbot")).expanduser()
    # PORT is validated by LocalSettings (which also allows 0); the dispatcher's HTTP server gets it there.
    dispatcher = collect(DispatcherSettings, port=constants.DEFAULT_PORT)
    # Checked now with this machine's per-turn values, so that a bad setting stops peerbot local at start
    # instead of failing every turn.
    repositories: dict[str, object] = (
        {"repository_host": "local", "repositories_dir": folder / REPOSITORIES_FOLDER} if local_git else {}
    )
    worker = collect(
        WorkerSettings,
        session_store="local",
        session_dir=folder / "sessions",
        workspace_dir=folder / "workspaces",
        peerbot_result_file=folder / "jobs" / "check.result.json",
        **repositories,
    )
    if problems:
        raise LocalSetupError(setup_message(env_file, missing=[], problems=problems, local=local_git))
    assert isinstance(local, LocalSettings)
    assert isinstance(dispatcher, DispatcherSettings)
    assert isinstance(worker, WorkerSettings)
    return LocalConfig(
        local=local, dispatcher=dispatcher, worker=worker, environment=dict(os.environ), env_file=env_file
    )
