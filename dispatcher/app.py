"""Building and running the dispatcher: the Bolt ``AsyncApp``, its listeners, and the one HTTP server.

:func:`build_dispatcher` assembles everything from settings and a Kubernetes API client, or any other
:class:`~peerbot.dispatcher.store.ConversationBackend` (nothing is created at import time);
:class:`DispatcherApp` runs it:

- **Socket Mode** when ``SLACK_APP_TOKEN`` is set: Bolt's aiohttp ``AsyncSocketModeHandler`` holds the
  websocket; the HTTP server serves only ``/health``, ``/ready`` and ``/metrics``.
- **HTTP mode** otherwise: the server is Bolt's own ``AsyncApp.web_app()`` with ``/slack/events`` (signature
  check, ``url_verification``) plus the same three endpoints.

Bolt runs with ``process_before_response=True``: the response to Slack (the HTTP 200, or the Socket Mode
ack frame) goes out only when the listener returns, and our listeners return right after the durable
write and ``ack()`` (see :mod:`peerbot.dispatcher.service`). With Bolt's default, events are acknowledged
*before* the listener runs, which would make "durable first, then acknowledge" impossible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Self

import aiohttp
import structlog
from aiohttp import web
from kubernetes_asyncio import client as k8s
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.dispatcher import actions, commands, events, middleware
from peerbot.dispatcher.metrics import Metrics
from peerbot.dispatcher.ratelimit import RateLimiter
from peerbot.dispatcher.service import Dispatcher
from peerbot.dispatcher.store import ConversationBackend, ConversationStore, explain
from peerbot.health import Uptime, health_body, ready_body
from peerbot.metrics import metrics_handler
from peerbot.resilience import Dependency, slack_retry_handlers
from peerbot.settings import DispatcherSettings

#: Lazy: bound at the first log call, so it follows configure_logging() whenever that runs.
log = structlog.get_logger(__name__)

EVENTS_PATH: Final = "/slack/events"
#: /ready re-checks Slack's auth.test at most this often: probes every few seconds must not hammer Slack.
SLACK_AUTH_CHECK_INTERVAL_SECONDS: Final = 60.0
#: A readiness check that takes longer than this counts as failed (kubelet's default probe timeout is 1 s;
#: the chart gives /ready more, but a slow dependency is not ready either way).
READY_CHECK_TIMEOUT_SECONDS: Final = 2.0
#: Slack's 429s are retried after Retry-After, at most this many times, before the error surfaces.
SLACK_RATE_LIMIT_RETRIES: Final = 2
#: A Slack Web API call that takes longer than this has failed (Slack answers in well under a second).
SLACK_REQUEST_TIMEOUT_SECONDS: Final = 10.0
#: aiohttp waits this long for in-flight requests when the server stops.
SHUTDOWN_GRACE_SECONDS: Final = 5.0


class TimedSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's aiohttp Socket Mode handler, measuring the time from envelope to acknowledgement."""

    def __init__(self, app: AsyncApp, app_token: str, web_client: AsyncWebClient, metrics: Metrics) -> None:
        super().__init__(app, app_token=app_token, web_client=web_client)
        self.metrics = metrics

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        start = time.perf_counter()
        response = await run_async_bolt_app(self.app, req)
        await send_async_response(client, req, response, start)
        self.metrics.ack_seconds.labels(transport="socket_mode").observe(time.perf_counter() - start)


@dataclass
class _SlackAuth:
    ok: bool = False
    detail: str = "not checked yet"
    checked_at: float = float("-inf")


class DispatcherApp:
    """A built dispatcher: start it with :meth:`start`, stop it with :meth:`stop` (or ``async with``)."""

    def __init__(
        self,
        settings: DispatcherSettings,
        *,
        bolt: AsyncApp,
        dispatcher: Dispatcher,
        store: ConversationBackend,
        namespace: str,
        web_app: web.Application,
        socket_handler: TimedSocketModeHandler | None,
        owns_slack_client: bool = True,
    ) -> None:
        self.settings = settings
        self.bolt = bolt
        self.dispatcher = dispatcher
        self.metrics = dispatcher.metrics
        self.store = store
        self.namespace = namespace
        self.web_app = web_app
        self.socket_handler = socket_handler
        self._owns_slack_client = owns_slack_client
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._slack_auth = _SlackAuth()
        self.uptime = Uptime()

    @property
    def socket_mode(self) -> bool:
        return self.socket_handler is not None

    @property
    def url(self) -> str:
        """The server's base URL (``http://host:port``), once started."""
        if self._port is None:
            raise RuntimeError("the dispatcher is not running: call start() first")
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host  # noqa: S104
        return f"http://{host}:{self._port}"

    @property
    def events_url(self) -> str:
        """Where Slack sends events in HTTP mode."""
        return self.url + EVENTS_PATH

    async def start(self, host: str = "0.0.0.0", port: int | None = None) -> Self:  # noqa: S104
        """Serve HTTP on ``host:port`` (``PORT`` by default; 0 picks a free port) and, in Socket Mode,
        connect to Slack. Returns once both are up."""
        self._host = host
        self._runner = web.AppRunner(self.web_app, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.settings.port if port is None else port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port
        if self.socket_handler is not None:
            await self.socket_handler.connect_async()  # type: ignore[no-untyped-call]
        log.info(
            "dispatcher started",
            mode="socket_mode" if self.socket_mode else "http",
            url=self.url,
            namespace=self.namespace,
        )
        return self

    async def stop(self) -> None:
        """Finish the work in flight (bounded), stop taking events, and close every connection.

        In Socket Mode the work is drained *before* the websocket closes, so that payloads being handled
        can still be acknowledged; an envelope that arrives meanwhile is handled too.
        """
        if not await self.dispatcher.drain():
            log.warning("stopping with work still in flight; Slack will retry what was not acknowledged")
        if self.socket_handler is not None:
            await self.socket_handler.close_async()  # type: ignore[no-untyped-call]
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.dispatcher.close()
        if self._owns_slack_client:
            await _close_web_client(self.dispatcher.slack)
        await _close_storage(self.dispatcher.limiter)
        self._port = None
        log.info("dispatcher stopped")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- endpoints ----------------------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """Each dependency and whether it is usable: ``ok`` or what is wrong."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await self.store.ping()
            checks["kubernetes"] = "ok"
        except Exception as error:
            checks["kubernetes"] = str(explain(error))
        checks["slack"] = await self._check_slack()
        if self.socket_handler is not None:
            connected = await self.socket_handler.client.is_connected()
            checks["socket_mode"] = "ok" if connected else "not connected to Slack"
        for dependency, state in self.dispatcher.breakers.states().items():
            checks[f"circuit:{dependency}"] = state
        return checks

    async def _check_slack(self) -> str:
        auth = self._slack_auth
        if time.monotonic() - auth.checked_at < SLACK_AUTH_CHECK_INTERVAL_SECONDS and auth.ok:
            return "ok"
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await self.dispatcher.slack.auth_test()
            auth.ok, auth.detail = True, "ok"
        except SlackApiError as error:
            auth.ok = False
            auth.detail = f"auth.test failed ({error.response.get('error')}): check SLACK_BOT_TOKEN"
        except (TimeoutError, OSError) as error:
            auth.ok = False
            auth.detail = f"Slack is unreachable ({type(error).__name__})"
        auth.checked_at = time.monotonic()
        return auth.detail

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response(health_body("dispatcher", self.uptime))

    async def _ready(self, _request: web.Request) -> web.Response:
        checks = await self.readiness()
        body, ready = ready_body(
            "dispatcher", self.uptime, checks, maintenance=self.settings.peerbot_maintenance
        )
        return web.json_response(body, status=200 if ready else 503)

    def add_routes(self) -> None:
        token = self.settings.metrics_auth_token
        self.web_app.router.add_get("/health", self._health)
        self.web_app.router.add_get("/ready", self._ready)
        self.web_app.router.add_get(
            "/metrics", metrics_handler(self.metrics.render, token.get_secret_value() if token else None)
        )


def _events_middleware(metrics: Metrics, signing_secret: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Time every ``/slack/events`` request, and answer bodies Bolt cannot even parse.

    Bolt parses the body before it checks the signature, and a body that is not JSON (or form-encoded
    JSON) raises there. Such a request gets 401 when its signature is wrong, and otherwise an empty 200,
    logged and counted as malformed: a correctly signed body came from Slack, and an error would only
    make Slack send it again.
    """
    verifier = SignatureVerifier(signing_secret)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != EVENTS_PATH:
            return await handler(request)
        start = time.perf_counter()
        try:
            return await handler(request)
        except ValueError as error:  # json.JSONDecodeError and friends, raised while parsing the body
            body = await request.read()
            if not _signed_by_slack(verifier, body, request):
                return web.Response(status=401, text="invalid request signature")
            metrics.event("unknown", "rejected_malformed")
            log.warning("malformed Slack payload acknowledged and dropped", error=str(error)[:200])
            return web.Response(status=200, text="")
        finally:
            metrics.ack_seconds.labels(transport="http").observe(time.perf_counter() - start)

    return guard


def _signed_by_slack(verifier: SignatureVerifier, body: bytes, request: web.Request) -> bool:
    """Whether Slack signed this request. Slack's bodies are always UTF-8: one that is not (invalid bytes)
    never came from Slack, so it is refused like a bad signature instead of failing the signature check
    itself (slack_sdk's verifier decodes the body first and would raise, answering 500)."""
    try:
        return verifier.is_valid_request(body, dict(request.headers))
    except UnicodeDecodeError:
        return False


async def _close_web_client(slack: AsyncWebClient) -> None:
    session = getattr(slack, "session", None)
    if session is not None and not session.closed:
        await session.close()


async def _close_storage(limiter: RateLimiter) -> None:
    timer = getattr(limiter.storage, "timer", None)
    if isinstance(timer, asyncio.Task) and not timer.done():
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


def slack_client(settings: DispatcherSettings, metrics: Metrics | None = None) -> AsyncWebClient:
    """The Web API client: ``SLACK_API_URL``, the bot token, and retries that honour ``Retry-After``.

    It gets one aiohttp session for its lifetime: without one, ``AsyncWebClient`` opens (and closes) a new
    session and connection for every call, which costs more than the call itself under load. Create it
    inside the running event loop; :meth:`DispatcherApp.stop` closes the session.
    """
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        session=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLACK_REQUEST_TIMEOUT_SECONDS)),
        timeout=int(SLACK_REQUEST_TIMEOUT_SECONDS),
        retry_handlers=slack_retry_handlers(
            lambda reason: metrics.resilience.retry(Dependency.SLACK, reason) if metrics else None,
            rate_limit_retries=SLACK_RATE_LIMIT_RETRIES,
            connection_retries=1,
            server_error_retries=0,
        ),
    )


async def build_dispatcher(
    settings: DispatcherSettings,
    *,
    kube_client: k8s.ApiClient | None = None,
    namespace: str,
    slack: AsyncWebClient | None = None,
    store: ConversationBackend | None = None,
) -> DispatcherApp:
    """Assemble a dispatcher (not started). Call it inside the event loop that will run it.

    Socket Mode when ``settings.slack_app_token`` is set, else HTTP mode (``check_mode`` makes sure one of
    the two can work). Conversations go to ``store`` when given (``peerbot local``'s folder), else to the
    Kubernetes API through ``kube_client`` in ``namespace``.
    """
    settings.check_mode()
    if store is None:
        if kube_client is None:
            raise TypeError("build_dispatcher needs a store or a kube_client to record Conversations with")
        store = ConversationStore(kube_client, namespace)
    socket_mode = settings.slack_app_token is not None
    metrics = Metrics()
    web_client = slack or slack_client(settings, metrics)
    limiter = RateLimiter(
        per_minute=settings.rate_limit_per_minute,
        trusted_per_minute=settings.trusted_rate_limit_per_minute,
        trusted_users=settings.id_set("trusted_users"),
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
    )
    dispatcher = Dispatcher(settings, store=store, slack=web_client, metrics=metrics, limiter=limiter)
    signing_secret = (
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    )
    bolt = AsyncApp(
        client=web_client,
        signing_secret=None if socket_mode else signing_secret,
        request_verification_enabled=not socket_mode,
        process_before_response=True,
        raise_error_for_unhandled_request=True,
        ignoring_self_events_enabled=True,
        url_verification_enabled=True,
        ssl_check_enabled=True,
    )
    middleware.register(bolt, dispatcher, http=not socket_mode)
    events.register(bolt, dispatcher)
    actions.register(bolt, dispatcher)
    commands.register(bolt, dispatcher)

    socket_handler: TimedSocketModeHandler | None = None
    if socket_mode:
        assert settings.slack_app_token is not None
        socket_handler = TimedSocketModeHandler(
            bolt, settings.slack_app_token.get_secret_value(), web_client, metrics
        )
        web_app = web.Application()
    else:
        assert signing_secret is not None  # check_mode: HTTP mode has the signing secret
        web_app = bolt.web_app(path=EVENTS_PATH, port=settings.port)
        web_app.middlewares.append(_events_middleware(metrics, signing_secret))
    app = DispatcherApp(
        settings,
        bolt=bolt,
        dispatcher=dispatcher,
        store=store,
        namespace=namespace,
        web_app=web_app,
        socket_handler=socket_handler,
        owns_slack_client=slack is None,
    )
    app.add_routes()
    return app


__all__ = ["EVENTS_PATH", "DispatcherApp", "build_dispatcher", "slack_client"]
