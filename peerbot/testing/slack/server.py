"""The Slack stand-in: a local Slack Web API, Socket Mode endpoint and event sender, as strict as Slack.

:class:`SlackStandIn` runs an aiohttp server on its own event loop in a background thread, so sync code
(``slack_sdk.WebClient``) and async code (``AsyncWebClient``, Bolt's ``AsyncApp``) can both use it. It
serves:

- ``/api/{method}``: the Web API (:mod:`peerbot.testing.slack.webapi`), with form-encoded and JSON bodies,
  tokens checked as Slack checks them, and optional rate limits answered with HTTP 429 and ``Retry-After``;
- ``/link/``: the Socket Mode websocket that ``apps.connections.open`` points to (``hello``, envelopes,
  acks, retries of envelopes not acknowledged in time);
- ``/upload/v1/{file}``, ``/files-pri/...``: the upload URLs of ``files.getUploadURLExternal`` and file
  downloads; ``/actions/{id}``: ``response_url`` for button clicks and slash commands.

It also sends to the app what Slack sends: signed Events API requests and interactive payloads, retried
with ``X-Slack-Retry-Num`` when not acknowledged in time, plus forged, stale and replayed requests for
signature tests. Every call and every delivery is recorded, and the workspace can be read as a person
would see it (:meth:`SlackStandIn.render_thread`).

Start it with ``with SlackStandIn() as slack:`` (or :meth:`~SlackStandIn.start`/:meth:`~SlackStandIn.stop`),
then point clients at :attr:`~SlackStandIn.api_url` (``WebClient(base_url=slack.api_url)``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import math
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
from aiohttp import web

from peerbot import constants
from peerbot.testing.slack import events
from peerbot.testing.slack.events import Attempt, Delivery, EnvelopeType
from peerbot.testing.slack.webapi import Caller, Params, WebApi
from peerbot.testing.slack.workspace import Channel, Message, SlackError, TokenKind, Workspace, _Stored

#: Slack re-delivers an event that was not acknowledged up to three times (Events API docs, "Retries");
#: the constants module holds only the 3-second deadline.
SLACK_MAX_EVENT_RETRIES: Final = 3
#: Rate limits count the calls of the last minute, as Slack's per-method tiers do.
RATE_LIMIT_WINDOW_SECONDS: Final = 60.0
#: How long start() and stop() wait for the server thread before reporting that it is stuck.
THREAD_TIMEOUT_SECONDS: Final = 10.0
#: How long the aiohttp server waits for in-flight requests when stopping; nothing in a test needs more.
SHUTDOWN_GRACE_SECONDS: Final = 1.0
#: Slack's file URLs answer a request without a valid token with the sign-in page (status 200, HTML),
#: not with 401: apps that forget the token download HTML instead of the file.
_SIGN_IN_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"
)


#: The bot scopes of ``slack-app-manifest.yaml``, which the stand-in's bot token is granted by default.
#: Slack names a token's scopes in the ``x-oauth-scopes`` header of every Web API answer.
BOT_SCOPES: Final = (
    "app_mentions:read",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "channels:read",
    "groups:read",
    "im:read",
    "mpim:read",
    "chat:write",
    "commands",
    "files:read",
    "files:write",
    "reactions:write",
    "users:read",
)


class SlackStandInError(RuntimeError):
    """The stand-in was used in a way it (or Slack) cannot serve; the message says how to fix it."""


@dataclass(frozen=True)
class ApiCall:
    """One Web API call the app made, as the stand-in received and answered it."""

    method: str
    #: The arguments, without the token.
    params: Mapping[str, Any]
    #: ``bot``, ``app`` or ``user``; ``None`` when the token was missing or unknown.
    token_kind: TokenKind | None
    at: float
    status: int
    response: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        error = self.response.get("error")
        return error if isinstance(error, str) else None


@dataclass
class _PendingAck:
    delivery: Delivery
    index: int
    future: asyncio.Future[Any]
    timed_out: bool = False


@dataclass(frozen=True)
class _ResponseTarget:
    channel: str
    message_ts: str | None
    thread_ts: str | None
    user: str


class SlackStandIn:
    """A local Slack for one workspace with one app installed (see the module docstring).

    Args:
        team_name: the workspace's name (``auth.test`` ``team``).
        team_domain: its domain (``https://{domain}.slack.com/``).
        bot_name: the display name of the app's bot user.
        ack_deadline: seconds the app has to acknowledge an event before Slack retries it (Slack: 3 s;
            tests pass a fraction of a second to stay fast).
        max_retries: how many times an unacknowledged event is re-delivered (Slack: 3).
        signing_secret: the app's signing secret (random when not given).
        populate: add the usual cast: a person (:attr:`human`, "alice"), a public channel
            (:attr:`public_channel`, #general), a private one (:attr:`private_channel`) and the direct
            messages between the bot and alice (:attr:`im_channel`); the bot is a member of all of them.
    """

    def __init__(
        self,
        *,
        team_name: str = "Peerbot Test",
        team_domain: str = "peerbot-test",
        bot_name: str = "peerbot",
        ack_deadline: float = constants.SLACK_ACK_DEADLINE_SECONDS,
        max_retries: int = SLACK_MAX_EVENT_RETRIES,
        signing_secret: str | None = None,
        populate: bool = True,
    ) -> None:
        if ack_deadline <= 0:
            raise ValueError(f"ack_deadline must be positive seconds, not {ack_deadline}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
        self.workspace = Workspace(team_name=team_name, domain=team_domain)
        self.ack_deadline = ack_deadline
        self.max_retries = max_retries
        self.app_id = self.workspace.new_id("A")
        self.bot_id = self.workspace.new_id("B")
        bot = self.workspace.add_user(
            bot_name, real_name=bot_name.title(), is_bot=True, bot_id=self.bot_id, app_id=self.app_id
        )
        self.bot_user_id = bot.id
        team_number = self.team_id.lstrip("T")
        self.bot_token = f"xoxb-{team_number}-{self.bot_user_id.lstrip('U')}-{secrets.token_hex(12)}"
        self.app_token = f"xapp-1-{self.app_id}-{team_number}-{secrets.token_hex(32)}"
        self.signing_secret = signing_secret or secrets.token_hex(16)
        #: The scopes the bot token holds (``x-oauth-scopes``); tests take some away to see them missed.
        self.bot_scopes: list[str] = list(BOT_SCOPES)
        self._tokens: dict[str, Caller] = {
            self.bot_token: Caller(kind="bot", user=self.bot_user_id, bot_id=self.bot_id, app_id=self.app_id),
            self.app_token: Caller(kind="app", user="", bot_id=None, app_id=self.app_id),
        }
        self.api = WebApi(
            self.workspace,
            bot_user=self.bot_user_id,
            app_id=self.app_id,
            socket_url=self._issue_socket_url,
            upload_url=lambda file_id: f"{self.url}upload/v1/{file_id}",
        )
        self._lock = self.workspace.lock
        self._calls: list[ApiCall] = []
        self._deliveries: list[Delivery] = []
        self._limits: dict[str, int] = {}
        self._windows: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._forced: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._next_socket = 0
        self._pending_acks: dict[str, _PendingAck] = {}
        self._unknown_acks: list[dict[str, Any]] = []
        self._responses: dict[str, _ResponseTarget] = {}
        self._response_posts: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._port: int | None = None
        self._cast: dict[str, str] = {}
        if populate:
            human = self.add_user("alice", real_name="Alice Example")
            self._cast = {
                "human": human,
                "public_channel": self.add_channel("general"),
                "private_channel": self.add_channel("peerbot-private", private=True),
                "im_channel": self.open_im(human),
            }

    def _cast_member(self, role: str) -> str:
        try:
            return self._cast[role]
        except KeyError:
            raise SlackStandInError(
                f"this stand-in was made with populate=False, so it has no {role}"
            ) from None

    @property
    def human(self) -> str:
        """The user id of alice, the person of the default workspace."""
        return self._cast_member("human")

    @property
    def public_channel(self) -> str:
        """The id of #general, a public channel with the bot and alice."""
        return self._cast_member("public_channel")

    @property
    def private_channel(self) -> str:
        """The id of #peerbot-private, a private channel with the bot and alice."""
        return self._cast_member("private_channel")

    @property
    def im_channel(self) -> str:
        """The id of the direct-message conversation between the bot and alice (``D…``)."""
        return self._cast_member("im_channel")

    # --- identity -------------------------------------------------------------------------------------

    @property
    def team_id(self) -> str:
        return self.workspace.team_id

    @property
    def url(self) -> str:
        """The server's base URL, ``http://127.0.0.1:PORT/``."""
        if self._port is None:
            raise SlackStandInError(
                "the Slack stand-in is not running: call start() (or use it as a context manager)"
            )
        return f"http://127.0.0.1:{self._port}/"

    @property
    def api_url(self) -> str:
        """The Web API base URL for ``WebClient(base_url=...)`` and ``SLACK_API_URL``: ``http://…/api/``."""
        return self.url + "api/"

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server on 127.0.0.1 (a free port) in a background thread; returns when it listens."""
        if self._thread is not None:
            raise SlackStandInError("the Slack stand-in is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="slack-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(THREAD_TIMEOUT_SECONDS):
            raise SlackStandInError(f"the Slack stand-in did not start within {THREAD_TIMEOUT_SECONDS:g} s")
        if failure:
            self._thread.join(THREAD_TIMEOUT_SECONDS)
            self._thread = None
            raise SlackStandInError(f"the Slack stand-in could not start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and its thread. Safe to call twice."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(THREAD_TIMEOUT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise SlackStandInError(
                f"the Slack stand-in's thread did not stop within {THREAD_TIMEOUT_SECONDS:g} s"
            )
        self._thread = None
        self._loop = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # report any start-up failure to start()
            failure.append(error)
            ready.set()
            loop.close()
            self._loop = None
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_web_api)
        app.router.add_get("/link/", self._handle_socket)
        app.router.add_post("/upload/v1/{file_id}", self._handle_upload)
        app.router.add_get("/files-pri/{team_file}/{name}", self._handle_file)
        app.router.add_post("/actions/{response_id}", self._handle_response_url)
        self._runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self._port = server.sockets[0].getsockname()[1]
        self.workspace.base_url = self.url
        self._client = aiohttp.ClientSession()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for socket in list(self._sockets):
            await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` on the stand-in's loop (from any thread), tracked so stop() can cancel it."""
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise SlackStandInError("the Slack stand-in is not running: call start() first")

        def create() -> None:
            task = loop.create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(create)

    # --- workspace set-up -----------------------------------------------------------------------------

    def add_user(self, name: str, *, real_name: str | None = None) -> str:
        """Add a person to the workspace; returns their user id."""
        return self.workspace.add_user(name, real_name=real_name).id

    def add_channel(self, name: str, *, private: bool = False, members: Iterable[str] | None = None) -> str:
        """Create a channel; by default its members are the bot and every person. Returns the channel id."""
        if members is None:
            members = [user.id for user in self.workspace.users()]
        channel = self.workspace.add_channel(
            name, kind="private" if private else "public", creator=self.bot_user_id, members=members
        )
        return channel.id

    def open_im(self, user_id: str) -> str:
        """The direct-message channel between the bot and a person (``D…``)."""
        self.workspace.user(user_id)
        return self.workspace.open_im(self.bot_user_id, user_id).id

    def set_members(self, channel: str, members: Iterable[str]) -> None:
        """Replace a channel's members (e.g. to remove the bot and check ``not_in_channel``)."""
        self.workspace.set_members(channel, members)

    def archive(self, channel: str) -> None:
        """Archive a channel (posting then fails with ``is_archived``)."""
        self.workspace.archive(channel)

    def add_emoji(self, *names: str) -> None:
        """Add custom emoji, so ``reactions.add`` accepts them (unknown names get ``invalid_name``)."""
        with self._lock:
            self.workspace.custom_emoji.update(names)

    def user_token(self, user_id: str) -> str:
        """A user token (``xoxp-…``) that acts as a person, for tests that call the API as that person."""
        user = self.workspace.user(user_id)
        token = f"xoxp-{self.team_id.lstrip('T')}-{user.id.lstrip('U')}-{secrets.token_hex(12)}"
        with self._lock:
            self._tokens[token] = Caller(kind="user", user=user.id, bot_id=None, app_id=self.app_id)
        return token

    def channel(self, channel: str) -> Channel:
        return self.workspace.channel(channel)

    # --- rate limits ----------------------------------------------------------------------------------

    def limit(self, method: str, *, per_minute: int) -> None:
        """Answer ``method`` with HTTP 429 once it was called ``per_minute`` times in the last minute."""
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, not {per_minute}")
        self._require_method(method)
        with self._lock:
            self._limits[method] = per_minute

    def fail_next(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and ``Retry-After: retry_after``."""
        if times < 1 or retry_after < 0:
            raise ValueError("times must be at least 1 and retry_after at least 0 seconds")
        self._require_method(method)
        with self._lock:
            self._forced[method].extend([retry_after] * times)

    def clear_limits(self) -> None:
        """Remove every rate limit and pending forced 429."""
        with self._lock:
            self._limits.clear()
            self._windows.clear()
            self._forced.clear()

    def _require_method(self, method: str) -> None:
        if method not in self.api.methods:
            known = ", ".join(sorted(self.api.methods))
            raise ValueError(f"the stand-in serves no method {method!r}; it serves: {known}")

    def _rate_limited(self, method: str) -> int | None:
        """The Retry-After to answer with, or ``None`` when the call may go through (and is counted)."""
        with self._lock:
            forced = self._forced.get(method)
            if forced:
                return forced.popleft()
            per_minute = self._limits.get(method)
            now = time.monotonic()
            window = self._windows[method]
            while window and window[0] <= now - RATE_LIMIT_WINDOW_SECONDS:
                window.popleft()
            if per_minute is not None and len(window) >= per_minute:
                return max(1, math.ceil(window[0] + RATE_LIMIT_WINDOW_SECONDS - now))
            window.append(now)
            return None

    # --- the Web API ----------------------------------------------------------------------------------

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        """The call's arguments and the token it carries (header, or form field; never query or JSON)."""
        params: dict[str, Any] = dict(request.query)
        # Apps created after February 2021 may not send tokens in the query string (Slack changelog
        # 2020-11), and a JSON body's token is never read: JSON requests need the Authorization header.
        params.pop("token", None)
        token: str | None = None
        if request.method == "POST" and request.body_exists:
            if "Content-Type" not in request.headers:
                raise SlackError("missing_post_type")
            if request.content_type == "application/json":
                try:
                    body = json.loads(await request.read() or b"{}")
                except json.JSONDecodeError:
                    raise SlackError("invalid_json") from None
                if not isinstance(body, dict):
                    raise SlackError("invalid_json")
                body.pop("token", None)
                params.update(body)
            elif request.content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}:
                form = await request.post()
                for key in form:
                    value = form[key]
                    if isinstance(value, str):
                        params[key] = value
                token = params.pop("token", None)
            elif request.content_type != "text/plain":
                # Slack lists text/plain as valid too (and reads no arguments from it); others are refused.
                raise SlackError("invalid_post_type")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[len("bearer ") :].strip()
        return params, token or None

    async def _handle_web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token_kind: TokenKind | None = None
        params: dict[str, Any] = {}
        status = 200
        headers: dict[str, str] = {}
        try:
            params, token = await self._read_params(request)
            entry = self.api.methods.get(method)
            if entry is None:
                status = 404
                raise SlackError("unknown_method", extra={"req_method": method})
            handler, allowed = entry
            if token is None:
                raise SlackError("not_authed")
            with self._lock:
                caller = self._tokens.get(token)
            if caller is None:
                raise SlackError("invalid_auth")
            token_kind = caller.kind
            if caller.kind == "bot":
                headers["x-oauth-scopes"] = ",".join(self.bot_scopes)
            if caller.kind not in allowed:
                raise SlackError("not_allowed_token_type")
            retry_after = self._rate_limited(method)
            if retry_after is not None:
                status = 429
                headers["Retry-After"] = str(retry_after)
                raise SlackError("ratelimited")
            with self._lock:
                body: dict[str, Any] = {"ok": True, **handler(caller, Params(params))}
        except SlackError as error:
            body = {"ok": False, "error": error.code, **error.extra}
        call = ApiCall(
            method=method, params=params, token_kind=token_kind, at=time.time(), status=status, response=body
        )
        with self._lock:
            self._calls.append(call)
        self.workspace.notify()
        return web.json_response(body, status=status, headers=headers)

    def _issue_socket_url(self) -> str:
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        # Slack hands out wss://wss-primary.slack.com/link/?ticket=…; locally it is plain ws on loopback.
        return f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"

    async def _handle_upload(self, request: web.Request) -> web.Response:
        content = await request.read()
        if not self.workspace.receive_upload(request.match_info["file_id"], content):
            return web.Response(status=404, text="upload URL not found or already used")
        return web.Response(text=f"OK - {len(content)}")

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        with self._lock:
            caller = (
                self._tokens.get(header[len("bearer ") :].strip())
                if header.lower().startswith("bearer ")
                else None
            )
        if caller is None or caller.kind == "app":
            return web.Response(text=_SIGN_IN_PAGE, content_type="text/html")
        _team, _, file_id = request.match_info["team_file"].partition("-")
        stored = self.workspace.file(file_id)
        if stored is None:
            return web.Response(status=404, text="file not found")
        return web.Response(body=stored.content, content_type=stored.mimetype)

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        with self._lock:
            target = self._responses.get(request.match_info["response_id"])
        if target is None:
            return web.json_response({"ok": False, "error": "expired_url"}, status=404)
        try:
            body = json.loads(await request.read())
        except json.JSONDecodeError:
            return web.json_response({"ok": False, "error": "invalid_json"}, status=400)
        with self._lock:
            self._response_posts.append(body)
        try:
            self._apply_response(target, body)
        except SlackError as error:
            return web.json_response({"ok": False, "error": error.code, **error.extra})
        return web.json_response({"ok": True})

    def _apply_response(self, target: _ResponseTarget, body: Mapping[str, Any]) -> None:
        params = Params(
            {key: value for key, value in body.items() if key in {"text", "blocks", "attachments"}}
        )
        if body.get("delete_original") and target.message_ts:
            self.workspace.delete(target.channel, target.message_ts)
            return
        text, blocks, attachments = self.api._content(params, required=True)
        if body.get("replace_original") and target.message_ts:
            self.workspace.edit(
                target.channel,
                target.message_ts,
                editor=self.bot_user_id,
                text=text or "",
                blocks=blocks or [],
                attachments=attachments,
            )
            return
        in_channel = body.get("response_type") == "in_channel"
        self.workspace.post(
            target.channel,
            user=self.bot_user_id,
            text=text or "",
            blocks=blocks or (),
            attachments=attachments or (),
            thread_ts=body.get("thread_ts") if isinstance(body.get("thread_ts"), str) else target.thread_ts,
            bot_id=self.bot_id,
            app_id=self.app_id,
            ephemeral_to=None if in_channel else target.user,
        )

    def _show_command_reply(self, delivery: Delivery, answer: str) -> None:
        """Show what the app answered a slash command with, as Slack does: to the person, or in the channel.

        The answer is a message (JSON) or plain text; Slack shows no answer to other payloads.
        """
        if delivery.envelope_type != "slash_commands":
            return
        with self._lock:
            target = self._responses.get(str(delivery.payload.get("response_url", "")).rsplit("/", 1)[-1])
        if target is None:
            return
        try:
            message = json.loads(answer)
        except json.JSONDecodeError:
            message = {"text": answer}
        if not isinstance(message, dict):
            message = {"text": answer}
        with contextlib.suppress(SlackError):  # Slack drops a reply it cannot show
            self._apply_response(target, message)

    def _response_url(self, target: _ResponseTarget) -> str:
        response_id = uuid.uuid4().hex
        with self._lock:
            self._responses[response_id] = target
        return f"{self.url}actions/{response_id}"

    # --- what tests read ------------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[ApiCall]:
        """The Web API calls received so far (of one method, or all), oldest first."""
        with self._lock:
            return [call for call in self._calls if method is None or call.method == method]

    def messages(self, channel: str) -> list[Message]:
        """The channel's live top-level messages, oldest first (what a person scrolling it sees)."""
        return [self.workspace.snapshot(s) for s in reversed(self.workspace.history_records(channel))]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The thread's parent and its live replies, oldest first."""
        try:
            records = self.workspace.thread_records(channel, thread_ts)
        except SlackError:
            raise KeyError(f"no message {thread_ts} in {channel} to read a thread from") from None
        return [self.workspace.snapshot(stored) for stored in records]

    def message(self, channel: str, ts: str) -> Message:
        """Any message ever posted at ``ts`` (deleted and ephemeral ones too), with its edit history."""
        return self.workspace.message_view(channel, ts)

    def ephemeral(self, channel: str, user: str | None = None) -> list[Message]:
        """Ephemeral messages (``chat.postEphemeral``, ``response_url``) shown in ``channel``."""
        return [self.workspace.snapshot(stored) for stored in self.workspace.ephemeral_records(channel, user)]

    def render_thread(self, channel: str, thread_ts: str, *, viewer: str | None = None) -> str:
        """The thread as plain text, as a person sees it: authors, text (blocks rendered), edits, reactions.

        With ``viewer``, the ephemeral messages only that person sees are shown too.
        """
        return self.workspace.render_thread(channel, thread_ts, viewer=viewer)

    def deliveries(self) -> list[Delivery]:
        """Every payload sent to the app (HTTP and Socket Mode), oldest first."""
        with self._lock:
            return list(self._deliveries)

    def response_url_posts(self) -> list[dict[str, Any]]:
        """What the app posted to ``response_url``s, oldest first."""
        with self._lock:
            return list(self._response_posts)

    def unknown_acks(self) -> list[dict[str, Any]]:
        """Socket Mode frames that acknowledged an envelope id the stand-in never sent."""
        with self._lock:
            return list(self._unknown_acks)

    def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, description: str = "the condition"
    ) -> None:
        """Block until ``predicate()`` holds; it is re-checked after every change (call, post, ack...)."""
        self.workspace.wait_until(predicate, timeout=timeout, description=description)

    async def wait_until_async(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (bounds a wait in a worker thread)
        description: str = "the condition",
    ) -> None:
        """:meth:`wait_until` for async tests (waits in a worker thread; the event loop keeps running)."""
        await asyncio.to_thread(self.wait_until, predicate, timeout=timeout, description=description)

    # --- people acting in Slack -----------------------------------------------------------------------

    def post_message(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> Message:
        """A person posts a message (in a thread with ``thread_ts``); files are ``(name, content)`` pairs.

        This changes the workspace only; build the event Slack sends for it with :meth:`event_for`.
        """
        person = self.workspace.user(user)
        conversation = self.workspace.channel(channel)
        if person.id not in conversation.members:
            raise SlackStandInError(
                f"{person.name} is not a member of {channel}: add them with set_members()"
            )
        stored_files = [self.workspace.add_file(name=name, user=user, content=data) for name, data in files]
        stored = self.workspace.post(
            channel,
            user=user,
            text=text,
            blocks=events.rich_text_blocks(text) if text else (),
            files=[stored.to_api(self.team_id) for stored in stored_files],
            thread_ts=thread_ts,
            subtype="file_share" if stored_files else None,
            client_msg_id=str(uuid.uuid4()),
        )
        return self.workspace.snapshot(stored)

    def event_for(self, message: Message, *, event_type: str = "message") -> dict[str, Any]:
        """The ``event_callback`` Slack sends for a stored message (``message`` or ``app_mention``)."""
        with self._lock:
            stored = self._record(message.channel, message.ts)
            channel = self.workspace.channel(message.channel)
            api_message = self.workspace.to_api(stored)
        if event_type == "app_mention" and self.bot_user_id not in events.mentions(stored.text):
            raise SlackStandInError(
                f"Slack sends app_mention only for messages that mention the bot (<@{self.bot_user_id}>)"
            )
        event = events.user_event(
            api_message, channel=channel.id, channel_type=_channel_type(channel), event_type=event_type
        )
        return self._envelope(event)

    def app_mention(
        self, user: str, channel: str, text: str, *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """A person mentions the bot: the message is posted, and its ``app_mention`` event returned.

        ``text`` must contain ``<@{bot_user_id}>``; :attr:`mention` writes it: ``f"{slack.mention} hi"``.
        """
        if self.bot_user_id not in events.mentions(text):
            raise SlackStandInError(f"an app_mention's text must mention the bot: include {self.mention}")
        return self.event_for(
            self.post_message(user, channel, text, thread_ts=thread_ts), event_type="app_mention"
        )

    @property
    def mention(self) -> str:
        """How a message mentions the bot: ``<@U…>``."""
        return f"<@{self.bot_user_id}>"

    def message_event(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> dict[str, Any]:
        """A person posts a message (``file_share`` when it has files): posted, and its event returned."""
        return self.event_for(self.post_message(user, channel, text, thread_ts=thread_ts, files=files))

    def edit_message(self, user: str, channel: str, ts: str, text: str) -> dict[str, Any]:
        """A person edits their message: stored (with its history), and ``message_changed`` returned."""
        with self._lock:
            stored = self._record(channel, ts)
            if stored.user != user:
                raise SlackStandInError(f"{user} cannot edit a message written by {stored.user}")
            previous = self.workspace.to_api(stored)
            stored = self.workspace.edit(
                channel, ts, editor=user, text=text, blocks=events.rich_text_blocks(text), attachments=None
            )
            current = self.workspace.to_api(stored)
            conversation = self.workspace.channel(channel)
        event_ts = self.workspace.next_ts()
        event = {
            "type": "message",
            "subtype": "message_changed",
            "message": current,
            "previous_message": previous,
            "channel": channel,
            "hidden": True,
            "ts": event_ts,
            "event_ts": event_ts,
            "channel_type": _channel_type(conversation),
        }
        return self._envelope(event)

    def delete_message(self, channel: str, ts: str) -> dict[str, Any]:
        """A message is deleted (by its author or an admin): ``message_deleted`` returned."""
        with self._lock:
            stored = self._record(channel, ts)
            previous = self.workspace.to_api(stored)
            self.workspace.delete(channel, ts)
            conversation = self.workspace.channel(channel)
        event_ts = self.workspace.next_ts()
        event = {
            "type": "message",
            "subtype": "message_deleted",
            "hidden": True,
            "deleted_ts": ts,
            "channel": channel,
            "previous_message": previous,
            "ts": event_ts,
            "event_ts": event_ts,
            "channel_type": _channel_type(conversation),
        }
        return self._envelope(event)

    def bot_message(
        self, channel: str, text: str, *, username: str = "some-integration", thread_ts: str | None = None
    ) -> dict[str, Any]:
        """Another integration posts (``bot_message``, as legacy bots and webhooks do); returns the event."""
        other_bot = self.workspace.new_id("B")
        stored = self.workspace.post(
            channel, user=None, text=text, thread_ts=thread_ts, subtype="bot_message", bot_id=other_bot
        )
        with self._lock:
            conversation = self.workspace.channel(channel)
            api_message = self.workspace.to_api(stored)
        api_message["username"] = username
        event = events.user_event(api_message, channel=channel, channel_type=_channel_type(conversation))
        return self._envelope(event)

    def block_action(self, user: str, channel: str, message_ts: str, action_id: str) -> dict[str, Any]:
        """A person clicks the button ``action_id`` in a message: the ``block_actions`` payload.

        Fails if the message has no such button, as a person could not click it.
        """
        with self._lock:
            stored = self._record(channel, message_ts)
            found = _find_action(stored.blocks, action_id)
            if found is None:
                raise SlackStandInError(
                    f"message {message_ts} in {channel} has no button with action_id {action_id!r}"
                )
            block_id, action = found
            conversation = self.workspace.channel(channel)
            person = self.workspace.user(user)
            api_message = self.workspace.to_api(stored)
        target = _ResponseTarget(
            channel=channel, message_ts=message_ts, thread_ts=stored.thread_ts, user=user
        )
        return events.block_actions_payload(
            team_id=self.team_id,
            team_domain=self.workspace.domain,
            api_app_id=self.app_id,
            user={"id": person.id, "name": person.name},
            channel={"id": conversation.id, "name": conversation.name},
            message=api_message,
            action=action,
            block_id=block_id,
            response_url=self._response_url(target),
        )

    def slash_command(self, user: str, channel: str, command: str, text: str = "") -> dict[str, str]:
        """A person runs a slash command: its fields (form-encoded over HTTP, an object in Socket Mode)."""
        person = self.workspace.user(user)
        conversation = self.workspace.channel(channel)
        target = _ResponseTarget(channel=channel, message_ts=None, thread_ts=None, user=user)
        return events.slash_command_payload(
            team_id=self.team_id,
            team_domain=self.workspace.domain,
            api_app_id=self.app_id,
            user={"id": person.id, "name": person.name},
            channel={"id": conversation.id, "name": conversation.name},
            command=command,
            text=text,
            response_url=self._response_url(target),
        )

    def _envelope(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return events.event_callback(
            event, team_id=self.team_id, api_app_id=self.app_id, bot_user_id=self.bot_user_id
        )

    def _record(self, channel: str, ts: str) -> _Stored:
        try:
            return self.workspace.get(channel, ts)
        except SlackError:
            raise SlackStandInError(f"no live message {ts} in {channel}") from None

    # --- HTTP delivery --------------------------------------------------------------------------------

    def send_event(self, url: str, payload: Mapping[str, Any]) -> Delivery:
        """Send a payload to the app's HTTP endpoint as Slack does, signed; returns at once.

        ``event_callback`` envelopes go as JSON and are re-delivered (``X-Slack-Retry-Num``,
        ``X-Slack-Retry-Reason``) up to :attr:`max_retries` times while the app does not answer 2xx within
        :attr:`ack_deadline`; ``block_actions`` go form-encoded as ``payload=``, slash commands as form
        fields, both once (Slack shows the person an error instead of retrying). Slack spaces its retries
        (at once, after a minute, after five); the stand-in retries as soon as each deadline passes. Wait for
        the outcome with ``delivery.wait()`` or ``await delivery.wait_async()``.
        """
        kind = _envelope_type(payload)
        body, content_type = _http_body(payload)
        delivery = self._new_delivery("http", kind, payload, url)
        retries = self.max_retries if payload.get("type") == "event_callback" else 0
        self._spawn(self._deliver_http(delivery, body, content_type, retries=retries))
        return delivery

    def send_url_verification(self, url: str) -> Delivery:
        """Send the ``url_verification`` challenge Slack sends when the Request URL is saved."""
        payload = {
            "token": events.VERIFICATION_TOKEN,
            "challenge": secrets.token_urlsafe(24),
            "type": "url_verification",
        }
        return self.send_event(url, payload)

    def send_forged_event(self, url: str, payload: Mapping[str, Any]) -> Delivery:
        """Send the payload once, signed with the wrong secret (a forgery the app must refuse)."""
        body, content_type = _http_body(payload)
        headers = events.signed_headers("not-" + self.signing_secret, body, content_type=content_type)
        return self._send_once(url, payload, body, headers)

    def send_stale_event(self, url: str, payload: Mapping[str, Any]) -> Delivery:
        """Send the payload once, correctly signed but with a timestamp older than five minutes."""
        body, content_type = _http_body(payload)
        stale = int(time.time()) - constants.SLACK_SIGNATURE_MAX_AGE_SECONDS - 60
        headers = events.signed_headers(self.signing_secret, body, content_type=content_type, timestamp=stale)
        return self._send_once(url, payload, body, headers)

    def send_unsigned_event(self, url: str, payload: Mapping[str, Any]) -> Delivery:
        """Send the payload once with no signature headers at all."""
        body, content_type = _http_body(payload)
        return self._send_once(url, payload, body, {"Content-Type": content_type})

    def replay(self, delivery: Delivery) -> Delivery:
        """Send an earlier request again byte for byte (same timestamp and signature): a replay."""
        first = delivery.attempts[0] if delivery.attempts else None
        if first is None or first.request_body is None or delivery.url is None:
            raise SlackStandInError("only an HTTP delivery that was sent can be replayed")
        return self._send_once(
            delivery.url, delivery.payload, first.request_body, dict(first.request_headers)
        )

    def _send_once(
        self, url: str, payload: Mapping[str, Any], body: bytes, headers: dict[str, str]
    ) -> Delivery:
        delivery = self._new_delivery("http", _envelope_type(payload), payload, url)
        self._spawn(self._attempt_http(delivery, body, headers, number=0, reason=None, finish=True))
        return delivery

    def _new_delivery(
        self, transport: events.Transport, kind: EnvelopeType, payload: Mapping[str, Any], url: str | None
    ) -> Delivery:
        delivery = Delivery(
            transport=transport,
            envelope_type=kind,
            payload=dict(payload),
            url=url,
            _condition=self.workspace.changed,
        )
        with self._lock:
            self._deliveries.append(delivery)
        return delivery

    async def _deliver_http(
        self, delivery: Delivery, body: bytes, content_type: str, *, retries: int
    ) -> None:
        reason: str | None = None
        try:
            for number in range(retries + 1):
                headers = events.signed_headers(self.signing_secret, body, content_type=content_type)
                if number:
                    headers["X-Slack-Retry-Num"] = str(number)
                    headers["X-Slack-Retry-Reason"] = reason or "http_timeout"
                attempt = await self._attempt_http(delivery, body, headers, number=number, reason=reason)
                if attempt.outcome == "acked":
                    return
                reason = {"timeout": "http_timeout", "http_error": "http_error"}.get(
                    attempt.outcome, "connection_failed"
                )
        finally:
            delivery._finish()

    async def _attempt_http(
        self,
        delivery: Delivery,
        body: bytes,
        headers: dict[str, str],
        *,
        number: int,
        reason: str | None,
        finish: bool = False,
    ) -> Attempt:
        assert self._client is not None
        index = delivery._add(
            Attempt(
                number=number,
                retry_reason=reason,
                sent_at=time.time(),
                request_headers=headers,
                request_body=body,
            )
        )
        url = delivery.url or ""
        try:
            async with self._client.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.ack_deadline)
            ) as response:
                answer = await response.read()
                ok = 200 <= response.status < 300
                delivery._update(
                    index,
                    outcome="acked" if ok else "http_error",
                    status=response.status,
                    body=answer,
                    acked_at=time.time() if ok else None,
                )
                if ok and answer.strip():
                    self._show_command_reply(delivery, answer.decode(errors="replace"))
        except TimeoutError:
            delivery._update(index, outcome="timeout")
        except aiohttp.ClientError:
            delivery._update(index, outcome="connection_failed")
        except asyncio.CancelledError:
            delivery._update(index, outcome="cancelled")  # the stand-in is stopping
            raise
        finally:
            if finish:
                delivery._finish()
        return delivery.attempts[index]

    # --- Socket Mode ----------------------------------------------------------------------------------

    @property
    def socket_connections(self) -> int:
        """How many Socket Mode connections are open."""
        with self._lock:
            return len(self._sockets)

    def wait_for_socket_connection(self, *, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``count`` Socket Mode clients are connected (and were sent ``hello``)."""
        self.wait_until(
            lambda: len(self._sockets) >= count,
            timeout=timeout,
            description=f"{count} Socket Mode connection(s) (did the app call apps.connections.open?)",
        )

    async def wait_for_socket_connection_async(
        self,
        *,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 (bounds a wait in a worker thread)
    ) -> None:
        """:meth:`wait_for_socket_connection` for async tests."""
        await asyncio.to_thread(self.wait_for_socket_connection, count=count, timeout=timeout)

    def send_socket_event(self, payload: Mapping[str, Any]) -> Delivery:
        """Send a payload over Socket Mode in an envelope; returns at once (wait with ``delivery.wait()``).

        The envelope type follows the payload (``events_api``, ``interactive``, ``slash_commands``). An
        ``events_api`` envelope not acknowledged (``{"envelope_id": …}``) within :attr:`ack_deadline` is sent
        again, with a new envelope id and ``retry_attempt``/``retry_reason: "timeout"``, up to
        :attr:`max_retries` times.
        """
        if not self.socket_connections:
            raise SlackStandInError(
                "no Socket Mode connection is open: start the app's Socket Mode handler and call "
                "wait_for_socket_connection() before sending"
            )
        kind = _envelope_type(payload)
        delivery = self._new_delivery("socket_mode", kind, payload, None)
        retries = self.max_retries if kind == "events_api" else 0
        self._spawn(self._deliver_socket(delivery, retries=retries))
        return delivery

    def disconnect_socket_clients(self, reason: str = "refresh_requested") -> None:
        """Send Slack's ``disconnect`` message to every connection (clients then reconnect)."""
        message = json.dumps(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-standin"}}
        )

        async def send_all() -> None:
            for socket in list(self._sockets):
                await socket.send_str(message)

        self._spawn(send_all())

    async def _deliver_socket(self, delivery: Delivery, *, retries: int) -> None:
        assert self._loop is not None
        reason: str | None = None
        try:
            for number in range(retries + 1):
                envelope_id = str(uuid.uuid4())
                envelope: dict[str, Any] = {
                    "envelope_id": envelope_id,
                    "payload": delivery.payload,
                    "type": delivery.envelope_type,
                    "accepts_response_payload": delivery.envelope_type != "events_api",
                }
                if delivery.envelope_type == "events_api":
                    envelope["retry_attempt"] = number
                    envelope["retry_reason"] = reason or ""
                index = delivery._add(
                    Attempt(number=number, retry_reason=reason, sent_at=time.time(), envelope_id=envelope_id)
                )
                socket = self._pick_socket()
                if socket is None:
                    delivery._update(index, outcome="not_connected")
                    reason = "timeout"
                    continue
                pending = _PendingAck(delivery=delivery, index=index, future=self._loop.create_future())
                self._pending_acks[envelope_id] = pending
                try:
                    await socket.send_str(json.dumps(envelope))
                    await asyncio.wait_for(asyncio.shield(pending.future), self.ack_deadline)
                    return
                except TimeoutError:
                    pending.timed_out = True
                    delivery._update(index, outcome="timeout")
                    reason = "timeout"
                except (ConnectionError, RuntimeError):
                    pending.timed_out = True
                    delivery._update(index, outcome="not_connected")
                    reason = "timeout"
                except asyncio.CancelledError:
                    delivery._update(index, outcome="cancelled")  # the stand-in is stopping
                    raise
        finally:
            delivery._finish()

    def _pick_socket(self) -> web.WebSocketResponse | None:
        with self._lock:
            open_sockets = [socket for socket in self._sockets if not socket.closed]
            if not open_sockets:
                return None
            self._next_socket = (self._next_socket + 1) % len(open_sockets)
            return open_sockets[self._next_socket]

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._tickets
        if not known:
            return web.Response(
                status=401, text="invalid or missing ticket: get a URL from apps.connections.open"
            )
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        with self._lock:
            self._sockets.append(socket)
            connections = len(self._sockets)
        hello = {
            "type": "hello",
            "num_connections": connections,
            "debug_info": {
                "host": "applink-standin",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }
        await socket.send_str(json.dumps(hello))
        self.workspace.notify()
        try:
            async for frame in socket:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._on_socket_frame(frame.data)
        finally:
            with self._lock:
                if socket in self._sockets:
                    self._sockets.remove(socket)
            self.workspace.notify()
        return socket

    def _on_socket_frame(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except json.JSONDecodeError:
            frame = {"unparseable": data}
        envelope_id = frame.get("envelope_id") if isinstance(frame, dict) else None
        pending = self._pending_acks.get(envelope_id) if isinstance(envelope_id, str) else None
        if pending is None:
            with self._lock:
                self._unknown_acks.append(frame if isinstance(frame, dict) else {"frame": frame})
            self.workspace.notify()
            return
        if pending.timed_out or pending.future.done():
            attempt = pending.delivery.attempts[pending.index]
            pending.delivery._update(pending.index, late_acks=attempt.late_acks + 1)
            return
        pending.delivery._update(
            pending.index, outcome="acked", acked_at=time.time(), body=frame.get("payload")
        )
        pending.future.set_result(frame)
        reply = frame.get("payload")
        if reply:
            self._show_command_reply(pending.delivery, reply if isinstance(reply, str) else json.dumps(reply))


def _channel_type(channel: Channel) -> str:
    return {"public": "channel", "private": "group", "im": "im"}[channel.kind]


def _envelope_type(payload: Mapping[str, Any]) -> EnvelopeType:
    if payload.get("type") in {"event_callback", "url_verification"}:
        return "events_api"
    if "command" in payload:
        return "slash_commands"
    if isinstance(payload.get("type"), str):
        return "interactive"
    raise SlackStandInError(
        "cannot tell what to send: expected an event_callback envelope, an interactive payload or a slash "
        "command (build one with app_mention(), block_action() or slash_command())"
    )


def _http_body(payload: Mapping[str, Any]) -> tuple[bytes, str]:
    """The body and content type Slack sends a payload with over HTTP."""
    kind = _envelope_type(payload)
    if kind == "events_api":
        return json.dumps(payload).encode(), "application/json"
    if kind == "slash_commands":
        return urllib.parse.urlencode(payload).encode(), "application/x-www-form-urlencoded"
    return (
        urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(),
        "application/x-www-form-urlencoded",
    )


def _find_action(blocks: Sequence[Any], action_id: str) -> tuple[str, dict[str, Any]] | None:
    """The (block_id, element) of the button ``action_id`` in a message's blocks."""
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        candidates = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if isinstance(block.get("accessory"), dict):
            candidates.append(block["accessory"])
        for element in candidates:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return str(block.get("block_id") or f"b{index}"), element
    return None
