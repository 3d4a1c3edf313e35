"""``peerbot worker --idle``: a warm worker that waits for one claim, runs that turn, and exits.

The operator's pool (``docs/warm-workers.md``) starts idle worker pods before any turn needs them. An idle
worker:

1. **warms up**: imports everything a turn needs, builds its Slack, Anthropic, GitHub and session-store
   clients, and checks the bot token with Slack's ``auth.test`` (which also leaves a connection to Slack open
   in the client's pool, for the turn's first status edit);
2. **waits** for a claim on ``POST /claim``, answering ``GET /ready`` (the pod's readiness probe) while it
   can be claimed. A claim must carry the pod's token (``Authorization: Bearer``; the pod spec only has its
   SHA-256) and the turn's pointers, the same ``PEERBOT_*`` values a cold Job has in its environment. The
   first valid claim wins; the same claim again gets 200 (the operator retrying a lost answer), any other 409;
3. **runs that one turn** exactly as a cold worker does (:class:`peerbot.worker.turn.Turn`), writes the
   result document, and exits with the turn's code. It never serves a second turn.

It has no Kubernetes access, holds no user data before the claim, and exits by itself after
``PEERBOT_IDLE_TIMEOUT_SECONDS`` unclaimed (exit 0, no result), or at once on SIGTERM while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from peerbot import claim
from peerbot.logs import get_logger
from peerbot.result import ExitCode
from peerbot.settings import PeerbotSettings, SettingsError, WorkerSettings, load_settings
from peerbot.worker.pointers import TurnPointers

log = get_logger(__name__)

#: The idle worker listens on every address of its pod (the pod IP is what the operator connects to).
ALL_ADDRESSES: Final = "0.0.0.0"  # noqa: S104 (a pod's own network namespace; the NetworkPolicy guards it)
#: Unclaimed this long, an idle worker exits by itself (the pool replaces it long before: maxIdleMinutes).
DEFAULT_IDLE_TIMEOUT_SECONDS: Final = 35 * 60.0
#: Requests still in flight when the server stops get this long.
SHUTDOWN_GRACE_SECONDS: Final = 1.0
#: The TurnPointers fields a claim sets (their environment names are ``claim.POINTERS``); everything else,
#: the settings every part shares included, comes from the pod.
_POINTER_FIELDS: Final = tuple(
    name for name in TurnPointers.model_fields if name not in PeerbotSettings.model_fields
)
#: Modules a turn imports; importing them while idle is most of what "warm" buys after the pod start.
WARM_IMPORTS: Final = (
    "anthropic",
    "github",
    "slack_sdk.web.async_client",
    "peerbot.worker.turn",
    "peerbot.worker.agent",
    "peerbot.worker.model",
    "peerbot.worker.repository",
    "peerbot.worker.checkpoint",
    "peerbot.worker.tools",
    "peerbot.session.local",
)

TurnRunner = Callable[[TurnPointers], Awaitable[int]]


class IdleSettings(PeerbotSettings):
    """The idle worker's own settings (the pool manager puts them in the idle pod's environment)."""

    peerbot_claim_token_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        json_schema_extra={
            "hint": "set PEERBOT_CLAIM_TOKEN_SHA256 to the SHA-256 (hex) of the pod's claim token; the "
            "operator's pool sets it: run `peerbot worker --idle` only from the pool"
        },
    )
    peerbot_idle_port: int = Field(
        default=claim.DEFAULT_CLAIM_PORT,
        ge=1,
        le=65535,
        json_schema_extra={"hint": "set PEERBOT_IDLE_PORT to the claim port (worker.pool.port)"},
    )
    peerbot_idle_host: str = Field(
        default=ALL_ADDRESSES,
        min_length=1,
        json_schema_extra={"hint": "set PEERBOT_IDLE_HOST to the address to listen on"},
    )
    peerbot_idle_timeout_seconds: float = Field(
        default=DEFAULT_IDLE_TIMEOUT_SECONDS,
        gt=0,
        json_schema_extra={"hint": "set PEERBOT_IDLE_TIMEOUT_SECONDS to seconds (over 0)"},
    )


class ClaimedPointers(TurnPointers):
    """The turn's pointers as a claim carries them: read from the claim only, never from the environment.

    Nothing in the idle process's own environment (or a ``.env`` file) can stand in for a pointer the claim
    did not carry, and the claim's path reads no environment at all.
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def pointers_from_claim(values: Mapping[str, str]) -> TurnPointers:
    """The turn's pointers from a claim's ``PEERBOT_*`` values (raises :class:`SettingsError`)."""
    given = {field: values[field.upper()] for field in _POINTER_FIELDS if field.upper() in values}
    return load_settings(ClaimedPointers, **given)


@dataclass
class _Claimed:
    claim: str
    pointers: TurnPointers


class IdleWorker:
    """The claim server of one idle worker and the one turn it serves (see the module docstring).

    Args:
        token_digest: the SHA-256 (hex) of the only token that may claim this worker.
        run_turn: runs the claimed turn and returns its exit code.
        host, port: where to listen (port 0: any free port; :attr:`url` tells which).
        idle_timeout: seconds to wait for a claim before exiting.
        warm_up: awaited before the worker reports ready (imports, clients); a ``SettingsError`` from it
            stops the worker with exit code 2.
    """

    def __init__(
        self,
        *,
        token_digest: str,
        run_turn: TurnRunner,
        host: str = ALL_ADDRESSES,
        port: int = claim.DEFAULT_CLAIM_PORT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
        warm_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._digest = token_digest
        self._run_turn = run_turn
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout
        self._warm_up = warm_up
        self._runner: web.AppRunner | None = None
        self._ready = False
        self._stopping = False
        self._claimed: _Claimed | None = None
        self._claim_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self.url: str | None = None
        #: Set once the worker is warm and claimable (what its readiness probe reports).
        self.ready_event = asyncio.Event()
        #: Claims refused, by HTTP status (for tests and logs).
        self.refused: dict[int, int] = {}

    @property
    def claimed(self) -> str | None:
        """The claim (turn name) this worker accepted, if any."""
        return self._claimed.claim if self._claimed else None

    def terminate(self) -> None:
        """SIGTERM while idle: stop waiting, refuse claims, exit without a result."""
        self._stopping = True
        self._ready = False
        self._stop_event.set()

    async def start(self) -> str:
        """Start listening (not yet ready); returns the base URL."""
        app = web.Application(client_max_size=claim.MAX_CLAIM_BYTES)
        app.router.add_get(claim.READY_PATH, self._handle_ready)
        app.router.add_post(claim.CLAIM_PATH, self._handle_claim)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def serve(self) -> int:
        """Warm up, wait for one claim, run its turn; the exit code (0 when never claimed)."""
        if self._runner is None:
            await self.start()
        try:
            if self._warm_up is not None:
                try:
                    await self._warm_up()
                except SettingsError as error:
                    log.error("idle_worker_cannot_start", problems=error.problems)
                    return int(ExitCode.SETTINGS)
            if self._stopping:
                return 0
            self._ready = True
            self.ready_event.set()
            log.info("idle_worker_ready", url=self.url)
            waiters = {
                asyncio.ensure_future(self._claim_event.wait()),
                asyncio.ensure_future(self._stop_event.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=self._idle_timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            claimed = self._claimed
            if claimed is None:
                self._ready = False
                self._stopping = True
                log.info("idle_worker_exits_unclaimed", stopped=self._stop_event.is_set())
                return 0
            log.info("idle_worker_claimed", claim=claimed.claim)
            return await self._run_turn(claimed.pointers)
        finally:
            await self.stop()

    # --- HTTP ---------------------------------------------------------------------------------------------

    async def _handle_ready(self, _request: web.Request) -> web.Response:
        if self._ready:
            return web.json_response({"status": "ready"})
        state = "claimed" if self._claimed else ("stopping" if self._stopping else "warming up")
        return web.json_response({"status": state}, status=503)

    def _refuse(self, status: int, message: str, **headers: str) -> web.Response:
        self.refused[status] = self.refused.get(status, 0) + 1
        log.warning("claim_refused", status=status, reason=message)
        return web.json_response({"error": message}, status=status, headers=headers or None)

    async def _handle_claim(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not claim.token_matches(token.strip(), self._digest):
            return self._refuse(
                401, "a claim needs this pod's bearer token", **{"WWW-Authenticate": 'Bearer realm="claim"'}
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"a claim is at most {claim.MAX_CLAIM_BYTES} bytes")
        try:
            wanted = claim.ClaimRequest.model_validate_json(body)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            return self._refuse(400, f"not a claim: {problems}")
        # No await from here on: checking and taking the claim happen in one step of the event loop.
        if self._claimed is not None:
            if self._claimed.claim == wanted.claim:
                return web.json_response({"status": "accepted", "claim": wanted.claim}, status=200)
            return self._refuse(409, f"this worker already serves {self._claimed.claim}; it serves one turn")
        if self._stopping or not self._ready:
            return self._refuse(503, "this worker is not ready for a claim (warming up or stopping)")
        try:
            pointers = pointers_from_claim(wanted.pointers)
        except SettingsError as error:
            return self._refuse(400, "bad pointers: " + "; ".join(error.problems))
        self._claimed = _Claimed(wanted.claim, pointers)
        self._ready = False
        self._claim_event.set()
        return web.json_response({"status": "accepted", "claim": wanted.claim}, status=202)


# --- The real thing: `peerbot worker --idle` -------------------------------------------------------------


class _WarmClients:
    """The clients a turn uses, built while idle and handed to the turn; closed after it."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.retry_target: Callable[[], None] = lambda: None
        self.slack: Any = None
        self.anthropic: Any = None
        self.github: Any = None
        self.store: Any = None
        self._session: Any = None

    async def warm_up(self) -> None:
        import importlib

        for module in WARM_IMPORTS:
            importlib.import_module(module)
        settings = self.settings
        if settings.session_store == "gcs":
            importlib.import_module("peerbot.session.gcs")
        import aiohttp
        import anthropic
        from github import Auth, Github, GithubRetry
        from slack_sdk.errors import SlackApiError

        from peerbot.worker.slack_io import make_client

        self.slack = make_client(
            settings.slack_bot_token.get_secret_value(),
            settings.slack_api_url,
            on_retry=lambda reason: self.retry_target(),
        )
        # One pooled session: the connection auth.test opens is the one the turn's first edit reuses.
        self._session = self.slack.session = aiohttp.ClientSession()
        self.anthropic = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=0,
        )
        self.github = Github(
            base_url=settings.github_api_url,
            auth=Auth.Token(settings.github_token.get_secret_value()),
            timeout=30,
            retry=GithubRetry(total=3, secondary_rate_wait=15),
        )
        self.store = await asyncio.to_thread(self._make_store)
        try:
            await self.slack.auth_test()
        except SlackApiError as error:
            code = error.response.get("error") if error.response is not None else None
            raise SettingsError(
                [f"SLACK_BOT_TOKEN was refused by Slack ({code}): check the worker Secret's slack-bot-token"]
            ) from None
        except (OSError, TimeoutError, aiohttp.ClientError) as error:
            # Slack unreachable now is the turn's problem to report, not a reason to stay unready.
            log.warning("idle_worker_slack_unreachable", error=type(error).__name__)

    def _make_store(self) -> Any:
        settings = self.settings
        if settings.session_store == "local":
            from peerbot.session.local import LocalSessionStore

            return LocalSessionStore(settings.session_dir)
        from peerbot.session.gcs import GcsSessionStore, make_client

        return GcsSessionStore(settings.gcs_bucket_name, client=make_client(settings.storage_emulator_host))

    async def close(self) -> None:
        for client in (self.anthropic, self.github):
            if client is not None:
                with contextlib.suppress(Exception):
                    closing = client.close()
                    if asyncio.iscoroutine(closing):
                        await closing
        if self._session is not None:
            await self._session.close()


async def serve_idle(settings: WorkerSettings, idle: IdleSettings, env: Mapping[str, str]) -> int:
    """Run one idle worker until its turn ends (or it is never claimed); the exit code."""
    from peerbot.resilience import Dependency
    from peerbot.worker.turn import Dependencies, Turn, exit_code, write_result

    clients = _WarmClients(settings)
    loop = asyncio.get_running_loop()

    async def run_turn(pointers: TurnPointers) -> int:
        deps = Dependencies(
            store=clients.store,
            github=clients.github,
            anthropic=clients.anthropic,
            slack=clients.slack,
            env=dict(env),
        )
        turn = Turn(settings, pointers, deps)
        clients.retry_target = lambda: turn.stats.retry(Dependency.SLACK)
        loop.add_signal_handler(signal.SIGTERM, turn.terminate)
        result = await turn.run()
        if result is not None:
            write_result(settings.peerbot_result_file, result)
        return exit_code(result)

    worker = IdleWorker(
        token_digest=idle.peerbot_claim_token_sha256,
        run_turn=run_turn,
        host=idle.peerbot_idle_host,
        port=idle.peerbot_idle_port,
        idle_timeout=idle.peerbot_idle_timeout_seconds,
        warm_up=clients.warm_up,
    )
    loop.add_signal_handler(signal.SIGTERM, worker.terminate)
    try:
        return await worker.serve()
    finally:
        await clients.close()


def run_idle() -> int:
    """Entry point of ``peerbot worker --idle`` (settings errors are the caller's to report)."""
    settings = load_settings(WorkerSettings)
    idle = load_settings(IdleSettings)
    from peerbot.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, service="peerbot-worker")
    home = os.environ.get("HOME")
    if home:  # on the workspace volume in a pod (the root file system is read-only)
        os.makedirs(home, exist_ok=True)
    return asyncio.run(serve_idle(settings, idle, dict(os.environ)))
