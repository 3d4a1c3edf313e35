"""The worker's side of the Slack thread: read what people said, post and edit messages, react, upload.

Built on ``slack_sdk``'s ``AsyncWebClient`` with its retry handlers: 429 answers wait what ``Retry-After``
says, connection errors and 5xx answers are retried once. Every message goes through
:meth:`SlackThread.post` / :meth:`SlackThread.update`, which re-send a message Slack rejects
(``invalid_blocks``, ``msg_too_long``...) as plain text (:func:`peerbot.slack_messages.plain_text_fallback`),
so nothing is lost.

Reading (:meth:`SlackThread.new_messages`) pages through ``conversations.replies`` from the newest message
already answered, leaves out Peerbot's own messages, names who said what, turns Slack's markup back into
plain text, and lists shared files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from peerbot.logs import get_logger
from peerbot.planner import ts_value

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

log = get_logger(__name__)

#: Errors after which a message is re-sent as plain text.
FALLBACK_ERRORS: Final = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long", "invalid_attachments"}
)
#: Reaction errors that mean "already as wanted".
HARMLESS_REACTION_ERRORS: Final = frozenset({"already_reacted", "no_reaction"})
#: Replies are read in pages of this size (Slack's maximum is 1,000; 200 is what it recommends).
PAGE_SIZE: Final = 200
#: Files larger than this are listed as references only, never downloaded.
MAX_DOWNLOAD_BYTES: Final = 5 * 1024 * 1024
#: Slack's retry policy for this worker: 429 honoured up to this many times, connection errors and 5xx once.
RATE_LIMIT_RETRIES: Final = 4

_USER_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL_MENTION = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto):[^>|]+)(?:\|([^>]+))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class SharedFile:
    """A file shared in the thread."""

    id: str
    name: str
    mimetype: str
    size: int
    url: str | None
    permalink: str | None


@dataclass(frozen=True)
class ThreadMessage:
    """One message from the thread, as the agent will read it."""

    ts: str
    user: str | None
    author: str
    text: str
    files: tuple[SharedFile, ...] = field(default=())
    from_bot: bool = False


def make_client(
    token: str, base_url: str, on_retry: Callable[[str], None] = lambda reason: None
) -> AsyncWebClient:
    """An ``AsyncWebClient`` with the worker's retry policy; ``on_retry`` is told of every retry."""
    from slack_sdk.web.async_client import AsyncWebClient

    from peerbot.resilience import slack_retry_handlers

    return AsyncWebClient(
        token=token,
        base_url=base_url,
        retry_handlers=slack_retry_handlers(on_retry, rate_limit_retries=RATE_LIMIT_RETRIES),
    )


def slack_error(error: BaseException) -> str | None:
    """The ``error`` string of a Slack API error (``invalid_blocks``...), if it is one."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    try:
        value = response.get("error")
    except (AttributeError, TypeError):
        return None
    return value if isinstance(value, str) else None


def plain_text(text: str, names: Mapping[str, str]) -> str:
    """Slack's markup as plain text: ``<@U1>`` becomes ``@alice``, ``<url|label>`` becomes ``label (url)``."""
    from peerbot.slack_messages import unescape

    text = _USER_MENTION.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    text = _CHANNEL_MENTION.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    return unescape(text)


class SlackThread:
    """One Slack thread, through one ``AsyncWebClient`` (see the module docstring)."""

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str,
        *,
        redact: Callable[[str], str],
        on_fallback: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.client = client
        #: Told the reason whenever a rejected message is re-sent as plain text (the turn's statistics).
        self.on_fallback = on_fallback
        self.channel = channel
        self.thread_ts = thread_ts
        self.redact = redact
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self._names: dict[str, str] = {}
        self.calls = 0
        self.fallbacks = 0

    async def identify(self) -> None:
        """Learn who Peerbot is in this workspace (to leave its own messages out)."""
        self.calls += 1
        response = await self.client.auth_test()
        self.bot_user_id = response.get("user_id")
        self.bot_id = response.get("bot_id")

    async def name_of(self, user: str) -> str:
        """A person's display name (cached for the turn); the id if Slack does not say."""
        if user in self._names:
            return self._names[user]
        from slack_sdk.errors import SlackApiError

        name = user
        try:
            self.calls += 1
            response = await self.client.users_info(user=user)
            profile = (response.get("user") or {}).get("profile") or {}
            found = (
                profile.get("display_name")
                or profile.get("real_name")
                or (response.get("user") or {}).get("name")
            )
            name = str(found or user)
        except SlackApiError as error:
            log.info("user_name_unknown", user=user, error=slack_error(error))
        self._names[user] = name
        return name

    async def new_messages(self, after_ts: str | None) -> list[ThreadMessage]:
        """Messages newer than ``after_ts`` (all when ``None``), oldest first, without Peerbot's own."""
        raw: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"channel": self.channel, "ts": self.thread_ts, "limit": PAGE_SIZE}
            if after_ts:
                params["oldest"] = after_ts
                params["inclusive"] = False
            if cursor:
                params["cursor"] = cursor
            self.calls += 1
            response = await self.client.conversations_replies(**params)
            raw.extend(response.get("messages") or [])
            cursor = ((response.get("response_metadata") or {}).get("next_cursor")) or None
            if not response.get("has_more") or not cursor:
                break
        bar = ts_value(after_ts)
        messages: list[ThreadMessage] = []
        seen: set[str] = set()
        for item in raw:
            ts = str(item.get("ts", ""))
            if ts in seen or ts_value(ts) <= bar:
                continue
            seen.add(ts)
            if item.get("subtype") in (
                "message_deleted",
                "channel_join",
                "channel_leave",
                "thread_broadcast_deleted",
            ):
                continue
            user = item.get("user")
            ours = (self.bot_user_id and user == self.bot_user_id) or (
                self.bot_id and item.get("bot_id") == self.bot_id
            )
            if ours:
                continue
            for mentioned in _USER_MENTION.findall(str(item.get("text", ""))):
                if mentioned not in self._names and mentioned != self.bot_user_id:
                    await self.name_of(mentioned)
            names = dict(self._names)
            if self.bot_user_id:
                names[self.bot_user_id] = "peerbot"
            author = await self.name_of(user) if user else str(item.get("username") or "a bot")
            files = tuple(
                SharedFile(
                    id=str(f.get("id", "")),
                    name=str(f.get("name") or f.get("title") or "file"),
                    mimetype=str(f.get("mimetype") or "application/octet-stream"),
                    size=int(f.get("size") or 0),
                    url=f.get("url_private_download") or f.get("url_private"),
                    permalink=f.get("permalink"),
                )
                for f in item.get("files") or []
                if isinstance(f, dict)
            )
            messages.append(
                ThreadMessage(
                    ts=ts,
                    user=user,
                    author=author,
                    text=plain_text(str(item.get("text") or ""), names),
                    files=files,
                    from_bot=bool(item.get("bot_id")),
                )
            )
        messages.sort(key=lambda message: ts_value(message.ts))
        return messages

    async def download(self, file: SharedFile) -> bytes | None:
        """A shared file's content (with the bot token), or ``None`` if it is too big or cannot be fetched."""
        if file.url is None or file.size > MAX_DOWNLOAD_BYTES:
            return None
        import aiohttp

        token = self.client.token or ""
        try:
            timeout = aiohttp.ClientTimeout(total=30)
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(file.url, headers=headers) as response,
            ):
                if response.status != 200:
                    return None
                html = "text/html" in response.headers.get("Content-Type", "")
                if html and not file.name.endswith(".html"):
                    return None  # Slack's sign-in page: the token was not accepted
                data = await response.content.read(MAX_DOWNLOAD_BYTES + 1)
                return data if len(data) <= MAX_DOWNLOAD_BYTES else None
        except (aiohttp.ClientError, TimeoutError) as error:
            log.info("file_download_failed", file=file.id, error=str(error))
            return None

    # --- writing ------------------------------------------------------------------------------------------

    def _redacted(self, value: Any) -> Any:
        """``value`` with every string in it redacted (message text, block text, button labels)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {key: self._redacted(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._redacted(item) for item in value]
        return value

    async def post(self, message: Mapping[str, Any]) -> str | None:
        """Post ``message`` (``text`` and ``blocks``) in the thread; plain text if Slack rejects it."""
        from slack_sdk.errors import SlackApiError

        payload = {**self._redacted(message), "channel": self.channel, "thread_ts": self.thread_ts}
        try:
            self.calls += 1
            response = await self.client.chat_postMessage(**payload)
        except SlackApiError as error:
            if slack_error(error) not in FALLBACK_ERRORS:
                raise
            from peerbot.slack_messages import plain_text_fallback

            self.fallbacks += 1
            self.on_fallback(slack_error(error) or "unknown")
            log.warning("slack_message_rejected", error=slack_error(error), fallback="plain_text")
            self.calls += 1
            response = await self.client.chat_postMessage(**plain_text_fallback(payload))
        ts = response.get("ts")
        return str(ts) if ts else None

    async def update(self, ts: str, message: Mapping[str, Any]) -> None:
        """Edit message ``ts``; plain text if Slack rejects the blocks."""
        from slack_sdk.errors import SlackApiError

        payload = {**self._redacted(message), "channel": self.channel, "ts": ts}
        try:
            self.calls += 1
            await self.client.chat_update(**payload)
        except SlackApiError as error:
            if slack_error(error) not in FALLBACK_ERRORS:
                raise
            from peerbot.slack_messages import plain_text_fallback

            self.fallbacks += 1
            self.on_fallback(slack_error(error) or "unknown")
            log.warning("slack_message_rejected", error=slack_error(error), fallback="plain_text", edit=True)
            self.calls += 1
            await self.client.chat_update(**plain_text_fallback(payload))

    async def react(self, ts: str, name: str, *, remove: bool = False) -> None:
        """Add (or remove) a reaction; already there (or already gone) is fine, other errors are logged."""
        from slack_sdk.errors import SlackApiError

        try:
            self.calls += 1
            if remove:
                await self.client.reactions_remove(channel=self.channel, timestamp=ts, name=name)
            else:
                await self.client.reactions_add(channel=self.channel, timestamp=ts, name=name)
        except SlackApiError as error:
            if slack_error(error) not in HARMLESS_REACTION_ERRORS:
                log.info("reaction_failed", name=name, ts=ts, error=slack_error(error))

    async def upload(
        self, content: str | bytes, *, filename: str, title: str, comment: str | None = None
    ) -> bool:
        """Share a file in the thread; ``False`` (logged) when Slack refuses."""
        from slack_sdk.errors import SlackApiError

        if isinstance(content, str):
            content = self.redact(content)
        try:
            self.calls += 3  # files.getUploadURLExternal, the upload, files.completeUploadExternal
            kwargs: dict[str, Any] = {
                "channel": self.channel,
                "thread_ts": self.thread_ts,
                "content": content,
                "filename": filename,
                "title": title,
            }
            if comment:
                kwargs["initial_comment"] = self.redact(comment)
            await self.client.files_upload_v2(**kwargs)
            return True
        except SlackApiError as error:
            log.warning("file_upload_failed", file=filename, error=slack_error(error))
            return False
