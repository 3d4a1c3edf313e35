"""``peerbot local`` running: the real dispatcher in Socket Mode and the local runner, in one process.

:func:`serve` checks the Slack tokens (one clear line when Slack refuses one), takes the folder, starts
the runner (which picks up turns an earlier run left), then the dispatcher, and waits for Ctrl-C or
SIGTERM. Stopping is the reverse: the dispatcher finishes the Slack events in flight and disconnects;
the runner gives each running worker SIGTERM, so it saves its steps and pushes its work, and marks the
turn to continue at the next start. A second Ctrl-C stops the workers at once (their last completed step
is still saved).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.dispatcher.app import DispatcherApp, build_dispatcher
from peerbot.local.runner import LocalRunner, RunnerBusyError, RunnerFolders
from peerbot.local.settings import REPOSITORIES_FOLDER, LocalConfig
from peerbot.local.store import ConversationFiles, FileConversationStore
from peerbot.logs import get_logger
from peerbot.operator.reconcile import planner_settings

log = get_logger(__name__)

#: Slack calls made while starting (auth.test) get this long before Slack counts as unreachable.
STARTUP_TIMEOUT_SECONDS: Final = 10.0
#: Where the local HTTP server (/health, /ready, /metrics) listens: this machine only.
HOST: Final = "127.0.0.1"


class LocalStartError(Exception):
    """``peerbot local`` could not start for a reason a person can fix; the message says how."""


def _slack_refusal(setting: str, error: SlackApiError) -> LocalStartError:
    code = error.response.get("error") if error.response is not None else "unknown"
    return LocalStartError(
        f"Slack refused {setting} ({code}): check that it is the right token for your Slack app, that the "
        "app is installed in the workspace, and that it was not revoked (docs/local.md, 'Tokens')"
    )


async def _dispatcher(config: LocalConfig, store: FileConversationStore) -> DispatcherApp:
    """The real dispatcher, recording Conversations in the folder instead of the Kubernetes API."""
    return await build_dispatcher(config.dispatcher, store=store, namespace=store.namespace)


def _slack_client(config: LocalConfig) -> AsyncWebClient:
    settings = config.dispatcher
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        session=aiohttp.ClientSession(),
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(),
        ],
    )


async def _check_slack(slack: AsyncWebClient, config: LocalConfig) -> dict[str, Any]:
    """Both tokens, asked of Slack before anything starts: Socket Mode would retry a refused one forever."""
    settings = config.dispatcher
    assert settings.slack_app_token is not None  # load_config requires it
    app_token = settings.slack_app_token.get_secret_value()
    checks: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("SLACK_BOT_TOKEN", slack.auth_test),
        # Opens (and leaves unused) one Socket Mode URL: the only call that proves an app-level token.
        ("SLACK_APP_TOKEN", lambda: slack.apps_connections_open(app_token=app_token)),
    )
    answers = []
    for setting, call in checks:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_SECONDS):
                answers.append(await call())
        except SlackApiError as error:
            raise _slack_refusal(setting, error) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise LocalStartError(
                f"Slack is unreachable at {settings.slack_api_url} ({type(error).__name__}): check the "
                "network connection (and SLACK_API_URL, if it is set)"
            ) from None
    identity = answers[0].data
    return dict(identity) if isinstance(identity, dict) else {}


def _banner(config: LocalConfig, identity: dict[str, Any], url: str) -> str:
    folder = config.folder
    who = f"@{identity.get('user', 'peerbot')} in {identity.get('team', 'your workspace')}"
    return "\n".join(
        [
            f"peerbot local is running: Slack (Socket Mode) as {who}.",
            f"  conversations  {folder / 'conversations'}",
            f"  sessions       {folder / 'sessions'}",
            f"  turn logs      {folder / 'jobs'}",
            _repositories_line(config),
            f"  health         {url}/health",
            "Mention the bot in a channel it is in. Ctrl-C stops it: running turns are paused and saved, and "
            "continue when it starts again.",
        ]
    )


async def serve(
    config: LocalConfig,
    *,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run until ``stop`` is set or SIGINT/SIGTERM arrives.

    Raises :class:`LocalStartError` when it cannot start (a token Slack refuses, a busy folder or port).
    """
    stop = stop or asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            force.set()
        else:
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    slack = _slack_client(config)
    try:
        identity = await _check_slack(slack, config)
        folders = RunnerFolders(config.folder)
        folders.create()
        files = ConversationFiles(folders.conversations)
        runner = LocalRunner(
            folders=folders,
            files=files,
            slack=slack,
            planner_settings=planner_settings(
                session_timeout_minutes=config.local.session_timeout_minutes,
                max_concurrent_jobs=config.local.max_concurrent_jobs,
                retention_days=config.local.conversation_retention_days,
                maintenance=config.local.peerbot_maintenance,
            ),
            base_env=config.environment,
            reactions=config.dispatcher.enable_status_reactions,
        )
        store = FileConversationStore(files, on_change=runner.poke)
        try:
            await runner.start()
        except RunnerBusyError as error:
            raise LocalStartError(str(error)) from None
        try:
            app = await _dispatcher(config, store)
            try:
                await _start_dispatcher(app, config)
                (announce or _print)(_banner(config, identity, app.url))
                await stop.wait()
            finally:
                await app.stop()
        finally:
            await runner.stop(force=force)
    finally:
        await slack.session.close() if slack.session is not None else None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _start_dispatcher(app: DispatcherApp, config: LocalConfig) -> None:
    try:
        await app.start(HOST, config.local.port)
    except SlackApiError as error:
        raise _slack_refusal("SLACK_APP_TOKEN", error) from None
    except OSError as error:
        raise LocalStartError(
            f"cannot listen on {HOST}:{config.local.port} ({error.strerror or error}): set PORT to a free "
            "port, or to 0 to pick one"
        ) from None


def _repositories_line(config: LocalConfig) -> str:
    """Where the workers keep repositories: local git without ``GITHUB_TOKEN``, else GitHub."""
    worker = config.worker
    if worker.repository_host == "local":
        return (
            f"  repositories   {config.folder / REPOSITORIES_FOLDER} (local git: without GITHUB_TOKEN, "
            "repositories stay on this machine; set it to use GitHub)"
        )
    return f"  repositories   GitHub, {worker.github_api_url} (organization {worker.github_organization})"


def _print(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
