"""The Slack Web API methods the stand-in serves, as strict as Slack.

Each method takes the caller (whose token it is) and the request's arguments, changes the
:class:`~peerbot.testing.slack.workspace.Workspace`, and returns the response Slack gives, or raises
:class:`~peerbot.testing.slack.workspace.SlackError` with Slack's error code. The HTTP side (tokens, body
formats, rate limits, recording) lives in :mod:`peerbot.testing.slack.server`.

Response shapes and error codes follow Slack's method reference (docs.slack.dev/reference/methods),
checked against its published examples.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from peerbot import constants
from peerbot.testing.slack.blocks import validate_blocks
from peerbot.testing.slack.emoji import SKIN_TONES, STANDARD_EMOJI
from peerbot.testing.slack.workspace import Channel, SlackError, TokenKind, Workspace, ts_value

#: chat.postMessage and chat.update refuse more than 100 attachments (``too_many_attachments``).
MAX_ATTACHMENTS: Final = 100
#: ``limit`` defaults and ceiling of conversations.history (100) and conversations.replies (1,000).
HISTORY_DEFAULT_LIMIT: Final = 100
REPLIES_DEFAULT_LIMIT: Final = 1000
MAX_PAGE_LIMIT: Final = 1000


@dataclass(frozen=True)
class Caller:
    """Who is calling: the kind of token, and the user it acts as (the bot user for a bot token)."""

    kind: TokenKind
    user: str
    bot_id: str | None
    app_id: str


class Params:
    """A Web API call's arguments, from a form, a query string or a JSON body."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)

    def text(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str):
            return value
        raise SlackError("invalid_arguments", extra={"response_metadata": {"messages": [f"[ERROR] {name}"]}})

    def flag(self, name: str) -> bool:
        value = self.raw.get(name)
        if isinstance(value, bool):
            return value
        return str(value).lower() in {"1", "true", "yes"} if value is not None else False

    def integer(self, name: str, default: int) -> int:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SlackError("invalid_arguments") from None

    def json(self, name: str, *, error: str) -> Any:
        """A JSON argument: sent as a JSON string in forms, or as a value in JSON bodies."""
        value = self.raw.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise SlackError(error) from None
        return value


def _cursor(ts: str) -> str:
    return base64.b64encode(f"next_ts:{ts}".encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        decoded = base64.b64decode(cursor.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SlackError("invalid_cursor") from None
    prefix, _, ts = decoded.partition(":")
    if prefix != "next_ts":
        raise SlackError("invalid_cursor")
    try:
        ts_value(ts)
    except ValueError:
        raise SlackError("invalid_cursor") from None
    return ts


class WebApi:
    """The methods, bound to one workspace and the stand-in's bot identity."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        bot_user: str,
        app_id: str,
        socket_url: Callable[[], str],
        upload_url: Callable[[str], str],
    ) -> None:
        self.workspace = workspace
        self.bot_user = bot_user
        self.app_id = app_id
        self._socket_url = socket_url
        self._upload_url = upload_url
        #: method name -> (handler, token kinds allowed to call it)
        self.methods: dict[str, tuple[Callable[[Caller, Params], dict[str, Any]], frozenset[TokenKind]]] = {
            "auth.test": (self.auth_test, frozenset({"bot", "user"})),
            "chat.postMessage": (self.chat_post_message, frozenset({"bot", "user"})),
            "chat.update": (self.chat_update, frozenset({"bot", "user"})),
            "chat.delete": (self.chat_delete, frozenset({"bot", "user"})),
            "chat.postEphemeral": (self.chat_post_ephemeral, frozenset({"bot", "user"})),
            "chat.getPermalink": (self.chat_get_permalink, frozenset({"bot", "user"})),
            "reactions.add": (self.reactions_add, frozenset({"bot", "user"})),
            "reactions.remove": (self.reactions_remove, frozenset({"bot", "user"})),
            "reactions.get": (self.reactions_get, frozenset({"bot", "user"})),
            "conversations.replies": (self.conversations_replies, frozenset({"bot", "user"})),
            "conversations.history": (self.conversations_history, frozenset({"bot", "user"})),
            "conversations.info": (self.conversations_info, frozenset({"bot", "user"})),
            "conversations.open": (self.conversations_open, frozenset({"bot", "user"})),
            "users.info": (self.users_info, frozenset({"bot", "user"})),
            "apps.connections.open": (self.apps_connections_open, frozenset({"app"})),
            "files.getUploadURLExternal": (self.files_get_upload_url_external, frozenset({"bot", "user"})),
            "files.completeUploadExternal": (self.files_complete_upload_external, frozenset({"bot", "user"})),
        }

    # --- shared checks --------------------------------------------------------------------------------

    def _channel_for_reading(self, caller: Caller, params: Params) -> Channel:
        channel = self.workspace.resolve_channel(params.text("channel") or "", actor=caller.user)
        if caller.user not in channel.members:
            if channel.kind == "public":
                raise SlackError("not_in_channel")
            raise SlackError("channel_not_found")
        return channel

    def _channel_for_writing(self, caller: Caller, params: Params, *, name: str = "channel") -> Channel:
        channel = self.workspace.resolve_channel(params.text(name) or "", actor=caller.user)
        if caller.user not in channel.members:
            if channel.kind == "public":
                raise SlackError("not_in_channel")
            raise SlackError("channel_not_found")
        if channel.is_archived:
            raise SlackError("is_archived")
        return channel

    def _content(
        self, params: Params, *, required: bool
    ) -> tuple[str | None, list[Any] | None, list[Any] | None]:
        """Check ``text``, ``blocks`` and ``attachments`` the way chat.postMessage and chat.update do."""
        text = params.text("text")
        blocks = params.json("blocks", error="invalid_blocks_format")
        attachments = params.json("attachments", error="invalid_attachments")
        if blocks is not None and not isinstance(blocks, list):
            raise SlackError("invalid_blocks_format")
        if attachments is not None and not isinstance(attachments, list):
            raise SlackError("invalid_attachments")
        if required and not text and not blocks and not attachments:
            raise SlackError("no_text")
        if text is not None and len(text) > constants.SLACK_MAX_MESSAGE_TEXT:
            raise SlackError("msg_too_long")
        if blocks:
            problems = validate_blocks(blocks)
            if problems:
                raise SlackError(
                    "invalid_blocks",
                    extra={
                        "errors": problems,
                        "response_metadata": {"messages": [f"[ERROR] {problem}" for problem in problems]},
                    },
                )
        if attachments is not None and len(attachments) > MAX_ATTACHMENTS:
            raise SlackError("too_many_attachments")
        return text, blocks, attachments

    def _emoji(self, params: Params) -> str:
        name = params.text("name") or ""
        base, _, tone = name.partition("::")
        known = base in STANDARD_EMOJI or base in self.workspace.custom_emoji
        if not known or (tone and tone not in SKIN_TONES):
            raise SlackError("invalid_name")
        return name

    def _bot_fields(self, caller: Caller) -> dict[str, Any]:
        return {"bot_id": caller.bot_id, "app_id": caller.app_id} if caller.kind == "bot" else {}

    # --- methods --------------------------------------------------------------------------------------

    def auth_test(self, caller: Caller, params: Params) -> dict[str, Any]:
        user = self.workspace.user(caller.user)
        response: dict[str, Any] = {
            "url": f"https://{self.workspace.domain}.slack.com/",
            "team": self.workspace.team_name,
            "user": user.name,
            "team_id": self.workspace.team_id,
            "user_id": user.id,
        }
        if caller.kind == "bot":
            response["bot_id"] = caller.bot_id
        response["is_enterprise_install"] = False
        return response

    def chat_post_message(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        text, blocks, attachments = self._content(params, required=True)
        stored = self.workspace.post(
            channel.id,
            user=caller.user,
            text=text or "",
            blocks=blocks or (),
            attachments=attachments or (),
            thread_ts=params.text("thread_ts") or None,
            reply_broadcast=params.flag("reply_broadcast"),
            **self._bot_fields(caller),
        )
        return {"channel": channel.id, "ts": stored.ts, "message": self.workspace.to_api(stored)}

    def chat_update(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        ts = params.text("ts") or ""
        stored = self.workspace.get(channel.id, ts)
        if stored.user != caller.user:
            raise SlackError("cant_update_message")
        text, blocks, attachments = self._content(params, required=True)
        # The new text and blocks replace the old ones (an update without blocks leaves a text-only
        # message); attachments left out are kept, as chat.update's reference says.
        stored = self.workspace.edit(
            channel.id, ts, editor=caller.user, text=text or "", blocks=blocks or [], attachments=attachments
        )
        message = self.workspace.to_api(stored)
        return {"channel": channel.id, "ts": ts, "text": stored.text, "message": message}

    def chat_delete(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        ts = params.text("ts") or ""
        stored = self.workspace.get(channel.id, ts)
        if stored.user != caller.user:
            raise SlackError("cant_delete_message")
        self.workspace.delete(channel.id, ts)
        return {"channel": channel.id, "ts": ts}

    def chat_post_ephemeral(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        user_id = params.text("user") or ""
        if self.workspace.find_user(user_id) is None:
            raise SlackError("user_not_found")
        if user_id not in channel.members:
            raise SlackError("user_not_in_channel")
        text, blocks, attachments = self._content(params, required=True)
        stored = self.workspace.post(
            channel.id,
            user=caller.user,
            text=text or "",
            blocks=blocks or (),
            attachments=attachments or (),
            thread_ts=params.text("thread_ts") or None,
            ephemeral_to=user_id,
            **self._bot_fields(caller),
        )
        return {"message_ts": stored.ts}

    def chat_get_permalink(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_reading(caller, params)
        ts = params.text("message_ts") or ""
        self.workspace.get(channel.id, ts)
        archive = f"https://{self.workspace.domain}.slack.com/archives/{channel.id}"
        return {"channel": channel.id, "permalink": f"{archive}/p{ts.replace('.', '')}"}

    def reactions_add(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        ts = params.text("timestamp")
        if not ts:
            raise SlackError("no_item_specified")
        name = self._emoji(params)
        self.workspace.react(channel.id, ts, name, caller.user)
        return {}

    def reactions_remove(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_writing(caller, params)
        ts = params.text("timestamp")
        if not ts:
            raise SlackError("no_item_specified")
        name = self._emoji(params)
        self.workspace.unreact(channel.id, ts, name, caller.user)
        return {}

    def reactions_get(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_reading(caller, params)
        ts = params.text("timestamp")
        if not ts:
            raise SlackError("no_item_specified")
        stored = self.workspace.get(channel.id, ts)
        return {"type": "message", "channel": channel.id, "message": self.workspace.to_api(stored)}

    def _range(self, params: Params) -> tuple[Any, Any, bool]:
        oldest_text, latest_text = params.text("oldest"), params.text("latest")
        try:
            oldest = ts_value(oldest_text) if oldest_text else None
        except ValueError:
            raise SlackError("invalid_ts_oldest") from None
        try:
            latest = ts_value(latest_text) if latest_text else None
        except ValueError:
            raise SlackError("invalid_ts_latest") from None
        return oldest, latest, params.flag("inclusive")

    @staticmethod
    def _in_range(ts: str, oldest: Any, latest: Any, inclusive: bool) -> bool:
        value = ts_value(ts)
        if oldest is not None and (value < oldest or (value == oldest and not inclusive)):
            return False
        return not (latest is not None and (value > latest or (value == latest and not inclusive)))

    def _limit(self, params: Params, default: int) -> int:
        limit = params.integer("limit", default)
        if limit <= 0:
            return default
        return min(limit, MAX_PAGE_LIMIT)

    def conversations_replies(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_reading(caller, params)
        ts = params.text("ts")
        if not ts:
            raise SlackError("thread_not_found")
        oldest, latest, inclusive = self._range(params)
        limit = self._limit(params, REPLIES_DEFAULT_LIMIT)
        records = self.workspace.thread_records(channel.id, ts)
        parent, replies = records[0], records[1:]
        replies = [reply for reply in replies if self._in_range(reply.ts, oldest, latest, inclusive)]
        cursor = params.text("cursor")
        if cursor:
            # Continuation pages hold replies only; the parent leads the first page alone (as Slack does,
            # whatever ``oldest`` says).
            start = ts_value(_decode_cursor(cursor))
            page_source = [reply for reply in replies if ts_value(reply.ts) >= start]
        else:
            page_source = [parent, *replies]
        page, rest = page_source[:limit], page_source[limit:]
        response: dict[str, Any] = {
            "messages": [self.workspace.to_api(stored) for stored in page],
            "has_more": bool(rest),
        }
        if rest:
            response["response_metadata"] = {"next_cursor": _cursor(rest[0].ts)}
        return response

    def conversations_history(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self._channel_for_reading(caller, params)
        oldest, latest, inclusive = self._range(params)
        limit = self._limit(params, HISTORY_DEFAULT_LIMIT)
        records = [
            stored
            for stored in self.workspace.history_records(channel.id)
            if self._in_range(stored.ts, oldest, latest, inclusive)
        ]
        cursor = params.text("cursor")
        if cursor:
            start = ts_value(_decode_cursor(cursor))
            records = [stored for stored in records if ts_value(stored.ts) <= start]
        page, rest = records[:limit], records[limit:]
        response: dict[str, Any] = {
            "messages": [self.workspace.to_api(stored) for stored in page],
            "has_more": bool(rest),
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
        }
        if rest:
            response["response_metadata"] = {"next_cursor": _cursor(rest[0].ts)}
        return response

    def conversations_info(self, caller: Caller, params: Params) -> dict[str, Any]:
        channel = self.workspace.resolve_channel(params.text("channel") or "", actor=caller.user)
        if channel.kind != "public" and caller.user not in channel.members:
            raise SlackError("channel_not_found")
        return {"channel": channel.to_api(caller.user)}

    def conversations_open(self, caller: Caller, params: Params) -> dict[str, Any]:
        users = [user for user in (params.text("users") or "").split(",") if user]
        if len(users) != 1:
            raise SlackError("users_list_not_supplied" if not users else "not_enough_users")
        if self.workspace.find_user(users[0]) is None:
            raise SlackError("user_not_found")
        channel = self.workspace.open_im(caller.user, users[0])
        return {"channel": {"id": channel.id}}

    def users_info(self, caller: Caller, params: Params) -> dict[str, Any]:
        user = self.workspace.find_user(params.text("user") or "")
        if user is None:
            raise SlackError("user_not_found")
        return {"user": user.to_api()}

    def apps_connections_open(self, caller: Caller, params: Params) -> dict[str, Any]:
        return {"url": self._socket_url()}

    def files_get_upload_url_external(self, caller: Caller, params: Params) -> dict[str, Any]:
        filename = params.text("filename")
        length = params.integer("length", 0)
        if not filename or length <= 0:
            raise SlackError("invalid_arguments")
        file_id = self.workspace.start_upload(user=caller.user, filename=filename, length=length)
        return {"upload_url": self._upload_url(file_id), "file_id": file_id}

    def files_complete_upload_external(self, caller: Caller, params: Params) -> dict[str, Any]:
        items = params.json("files", error="invalid_arguments")
        if not isinstance(items, list) or not items:
            raise SlackError("invalid_arguments")
        channel: Channel | None = None
        if params.text("channel_id") or params.text("channels"):
            channel_ref = params.text("channel_id") or (params.text("channels") or "").split(",")[0]
            channel = self._channel_for_writing(caller, Params({"channel": channel_ref}))
        stored_files = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise SlackError("invalid_arguments")
            title = item.get("title")
            stored_files.append(
                self.workspace.finish_upload(
                    item["id"], title=title if isinstance(title, str) else None, user=caller.user
                )
            )
        api_files = [stored.to_api(self.workspace.team_id) for stored in stored_files]
        if channel is not None:
            self.workspace.post(
                channel.id,
                user=caller.user,
                text=params.text("initial_comment") or "",
                files=api_files,
                thread_ts=params.text("thread_ts") or None,
                **self._bot_fields(caller),
            )
        return {"files": api_files}
