"""The stand-in's workspace: team, users, channels, messages, reactions and files, as Slack keeps them.

The Web API (on the stand-in's event-loop thread) changes it and tests read it (from theirs), so every
access goes through one re-entrant lock, and every change notifies a condition that
:meth:`Workspace.wait_until` waits on: tests wait for what a person would see, never sleep.

Reads return frozen snapshots (:class:`Message`, :class:`User`, :class:`Channel`) so a test can keep
them while the workspace moves on.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from peerbot.testing.slack.blocks import render_blocks, render_mrkdwn

ChannelKind = Literal["public", "private", "im"]
TokenKind = Literal["bot", "app", "user"]

#: Slack's own system user, the author of tombstones ("This message was deleted.").
SLACKBOT_USER_ID = "USLACKBOT"
TOMBSTONE_TEXT = "This message was deleted."


class SlackError(Exception):
    """A Web API error: Slack's ``error`` code (with ``ok: false``), and any extra response fields."""

    def __init__(self, code: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.extra: dict[str, Any] = dict(extra or {})


def ts_value(ts: str) -> Decimal:
    """A Slack timestamp (``"1700000000.000100"``) as a number, for ordering and range filters."""
    try:
        value = Decimal(ts)
    except (InvalidOperation, TypeError) as error:
        raise ValueError(
            f"{ts!r} is not a Slack timestamp (seconds.micros, e.g. 1700000000.000100)"
        ) from error
    if not value.is_finite() or value < 0:
        raise ValueError(f"{ts!r} is not a Slack timestamp (seconds.micros, e.g. 1700000000.000100)")
    return value


@dataclass(frozen=True)
class User:
    """A member of the workspace: a person, or the bot user of an app."""

    id: str
    team_id: str
    name: str
    real_name: str
    is_bot: bool = False
    bot_id: str | None = None
    app_id: str | None = None
    email: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The user as ``users.info`` returns it."""
        profile: dict[str, Any] = {
            "real_name": self.real_name,
            "real_name_normalized": self.real_name,
            "display_name": self.name,
            "display_name_normalized": self.name,
            "team": self.team_id,
            "image_48": f"https://avatars.slack-edge.com/{self.id}_48.png",
        }
        if self.email:
            profile["email"] = self.email
        if self.bot_id:
            profile["bot_id"] = self.bot_id
            profile["api_app_id"] = self.app_id
            profile["always_active"] = False
        return {
            "id": self.id,
            "team_id": self.team_id,
            "name": self.name,
            "deleted": False,
            "color": "9f69e7",
            "real_name": self.real_name,
            "tz": "Europe/London",
            "tz_label": "Greenwich Mean Time",
            "tz_offset": 0,
            "profile": profile,
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": self.is_bot,
            "is_app_user": False,
            "updated": 1700000000,
            "is_email_confirmed": not self.is_bot,
            "who_can_share_contact_card": "EVERYONE",
        }


@dataclass(frozen=True)
class Channel:
    """A conversation: public or private channel, or a direct message (IM) between the bot and a person."""

    id: str
    team_id: str
    name: str
    kind: ChannelKind
    created: int
    creator: str
    members: frozenset[str]
    im_user: str | None = None
    is_archived: bool = False

    def to_api(self, viewer: str) -> dict[str, Any]:
        """The conversation as ``conversations.info`` returns it to ``viewer``."""
        if self.kind == "im":
            return {
                "id": self.id,
                "created": self.created,
                "is_archived": self.is_archived,
                "is_im": True,
                "is_org_shared": False,
                "context_team_id": self.team_id,
                "updated": self.created * 1000,
                "user": self.im_user,
                "is_user_deleted": False,
                "priority": 0,
            }
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_mpim": False,
            "is_private": self.kind == "private",
            "created": self.created,
            "is_archived": self.is_archived,
            "is_general": False,
            "unlinked": 0,
            "name_normalized": self.name,
            "is_shared": False,
            "is_org_shared": False,
            "is_ext_shared": False,
            "is_pending_ext_shared": False,
            "pending_shared": [],
            "context_team_id": self.team_id,
            "updated": self.created * 1000,
            "parent_conversation": None,
            "creator": self.creator,
            "is_member": viewer in self.members,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "previous_names": [],
        }


@dataclass(frozen=True)
class MessageVersion:
    """One earlier state of an edited message: what it said before an edit."""

    text: str
    blocks: tuple[Any, ...]
    edited_ts: str | None


@dataclass(frozen=True)
class Message:
    """A message as stored (a snapshot): what tests read and :meth:`SlackStandIn.render_thread` shows."""

    channel: str
    ts: str
    user: str | None
    bot_id: str | None
    text: str
    blocks: tuple[Any, ...]
    attachments: tuple[Any, ...]
    files: tuple[Mapping[str, Any], ...]
    thread_ts: str | None
    subtype: str | None
    reactions: Mapping[str, tuple[str, ...]]
    #: Earlier versions, oldest first: one per edit (``chat.update`` or a person's edit).
    history: tuple[MessageVersion, ...]
    edited_ts: str | None
    deleted: bool
    #: For an ephemeral message (``chat.postEphemeral``), the only user who sees it.
    ephemeral_to: str | None = None

    @property
    def edit_count(self) -> int:
        """How many times the message was edited."""
        return len(self.history)

    @property
    def is_reply(self) -> bool:
        """Whether the message is a reply in a thread (not the thread's parent)."""
        return self.thread_ts is not None and self.thread_ts != self.ts


@dataclass(frozen=True)
class StoredFile:
    """A file uploaded with ``files.getUploadURLExternal`` or attached to a person's message."""

    id: str
    name: str
    title: str
    mimetype: str
    filetype: str
    user: str
    created: int
    content: bytes
    url_private: str

    def to_api(self, team_id: str) -> dict[str, Any]:
        """The file object as Slack puts it in messages and ``files.*`` responses."""
        return {
            "id": self.id,
            "created": self.created,
            "timestamp": self.created,
            "name": self.name,
            "title": self.title,
            "mimetype": self.mimetype,
            "filetype": self.filetype,
            "pretty_type": self.filetype.upper() or "Binary",
            "user": self.user,
            "user_team": team_id,
            "editable": False,
            "size": len(self.content),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": False,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": self.url_private,
            "url_private_download": self.url_private + "?download=1",
            "permalink": self.url_private,
        }


@dataclass
class _Stored:
    """The mutable record behind a :class:`Message`."""

    channel: str
    ts: str
    user: str | None
    text: str
    blocks: list[Any]
    attachments: list[Any]
    files: list[dict[str, Any]]
    thread_ts: str | None
    subtype: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    client_msg_id: str | None = None
    reply_broadcast: bool = False
    reactions: dict[str, list[str]] = field(default_factory=dict)
    history: list[MessageVersion] = field(default_factory=list)
    edited_ts: str | None = None
    edited_by: str | None = None
    deleted: bool = False
    tombstone: bool = False
    ephemeral_to: str | None = None


class Workspace:
    """One Slack workspace (team) and everything in it; thread-safe."""

    def __init__(self, *, team_id: str | None = None, team_name: str, domain: str) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._ids = itertools.count(1)
        self._last_ts_micros = 0
        self.team_id = team_id or self.new_id("T")
        self.team_name = team_name
        self.domain = domain
        #: Where files are served from; set by the server once it knows its port.
        self.base_url = "http://127.0.0.1/"
        self._users: dict[str, User] = {}
        self._channels: dict[str, Channel] = {}
        self._messages: dict[str, dict[str, _Stored]] = {}
        self._ephemeral: list[_Stored] = []
        self._files: dict[str, StoredFile] = {}
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self.custom_emoji: set[str] = set()

    # --- identity and time ----------------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        """A fresh Slack-shaped id (upper-case letters and digits), unique across the workspace."""
        return f"{prefix}{next(self._ids):010X}"

    def next_ts(self) -> str:
        """A fresh message timestamp: ``seconds.micros``, strictly increasing, unique in the workspace."""
        with self.lock:
            now = int(time.time() * 1_000_000)
            self._last_ts_micros = max(now, self._last_ts_micros + 1)
            seconds, micros = divmod(self._last_ts_micros, 1_000_000)
            return f"{seconds}.{micros:06d}"

    def notify(self) -> None:
        """Wake every :meth:`wait_until`: something a test may be waiting for changed."""
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float, description: str) -> None:
        """Block until ``predicate()`` holds (checked after every change); fail clearly after ``timeout``."""
        with self.changed:
            if not self.changed.wait_for(predicate, timeout=timeout):
                raise TimeoutError(
                    f"waited {timeout:g} s for {description}, and it did not happen; "
                    "check the calls the app made (SlackStandIn.calls()) and what it posted (render_thread())"
                )

    # --- members and conversations --------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        real_name: str | None = None,
        is_bot: bool = False,
        bot_id: str | None = None,
        app_id: str | None = None,
        user_id: str | None = None,
    ) -> User:
        """Add a person (or, with ``is_bot``, a bot user) to the workspace."""
        with self.lock:
            user = User(
                id=user_id or self.new_id("U"),
                team_id=self.team_id,
                name=name,
                real_name=real_name or name.title(),
                is_bot=is_bot,
                bot_id=bot_id,
                app_id=app_id,
                email=None if is_bot else f"{name}@example.com",
            )
            self._users[user.id] = user
        self.notify()
        return user

    def add_channel(self, name: str, *, kind: ChannelKind, creator: str, members: Iterable[str]) -> Channel:
        """Create a public or private channel with the given members."""
        if kind == "im":
            raise ValueError("use open_im() for a direct-message conversation")
        with self.lock:
            if any(channel.name == name for channel in self._channels.values()):
                raise ValueError(f"a channel named #{name} already exists in the stand-in's workspace")
            channel = Channel(
                id=self.new_id("C"),
                team_id=self.team_id,
                name=name,
                kind=kind,
                created=int(time.time()),
                creator=creator,
                members=frozenset(members),
            )
            self._channels[channel.id] = channel
            self._messages[channel.id] = {}
        self.notify()
        return channel

    def open_im(self, bot_user: str, person: str) -> Channel:
        """The direct-message conversation between the bot and ``person`` (created on first use)."""
        with self.lock:
            for channel in self._channels.values():
                if channel.kind == "im" and channel.members == frozenset({bot_user, person}):
                    return channel
            channel = Channel(
                id=self.new_id("D"),
                team_id=self.team_id,
                name=person,
                kind="im",
                created=int(time.time()),
                creator=person,
                members=frozenset({bot_user, person}),
                im_user=person,
            )
            self._channels[channel.id] = channel
            self._messages[channel.id] = {}
        self.notify()
        return channel

    def set_members(self, channel_id: str, members: Iterable[str]) -> None:
        """Replace a channel's members (to test posting where the bot is not a member)."""
        with self.lock:
            channel = self.channel(channel_id)
            self._channels[channel_id] = Channel(**{**channel.__dict__, "members": frozenset(members)})
        self.notify()

    def archive(self, channel_id: str) -> None:
        """Archive a channel: posting to it then fails with ``is_archived``."""
        with self.lock:
            channel = self.channel(channel_id)
            self._channels[channel_id] = Channel(**{**channel.__dict__, "is_archived": True})
        self.notify()

    def user(self, user_id: str) -> User:
        """A user by id (``KeyError`` naming the id when there is none)."""
        with self.lock:
            try:
                return self._users[user_id]
            except KeyError:
                raise KeyError(f"no user {user_id} in the stand-in's workspace") from None

    def find_user(self, user_id: str) -> User | None:
        with self.lock:
            return self._users.get(user_id)

    def users(self) -> list[User]:
        with self.lock:
            return list(self._users.values())

    def channel(self, channel_id: str) -> Channel:
        """A conversation by id (``KeyError`` naming the id when there is none)."""
        with self.lock:
            try:
                return self._channels[channel_id]
            except KeyError:
                raise KeyError(f"no channel {channel_id} in the stand-in's workspace") from None

    def channels(self) -> list[Channel]:
        with self.lock:
            return list(self._channels.values())

    def resolve_channel(self, ref: str, *, actor: str) -> Channel:
        """Find the conversation a Web API ``channel`` argument names: an id, a ``#name``, or a user id (DM).

        Raises ``channel_not_found`` for anything else, as Slack does.
        """
        with self.lock:
            if not ref:
                raise SlackError("channel_not_found")
            if ref in self._channels:
                return self._channels[ref]
            if ref in self._users and ref != actor:
                return self.open_im(actor, ref)
            name = ref.removeprefix("#")
            for channel in self._channels.values():
                if channel.kind != "im" and channel.name == name:
                    return channel
            raise SlackError("channel_not_found")

    def name_of(self, object_id: str) -> str | None:
        """The display name of a user or the name of a channel, for rendering ``<@U…>`` and ``<#C…>``."""
        with self.lock:
            if object_id in self._users:
                return self._users[object_id].name
            if object_id in self._channels:
                return self._channels[object_id].name
            return None

    # --- messages -------------------------------------------------------------------------------------

    def _find(self, channel: str, ts: str) -> _Stored | None:
        stored = self._messages.get(channel, {}).get(ts)
        if stored is None or (stored.deleted and not stored.tombstone):
            return None
        return stored

    def get(self, channel: str, ts: str) -> _Stored:
        """The live message at ``ts`` (``message_not_found`` when there is none or it was deleted)."""
        with self.lock:
            stored = self._find(channel, ts)
            if stored is None or stored.deleted:
                raise SlackError("message_not_found")
            return stored

    def post(
        self,
        channel: str,
        *,
        user: str | None,
        text: str,
        blocks: Sequence[Any] = (),
        attachments: Sequence[Any] = (),
        files: Sequence[Mapping[str, Any]] = (),
        thread_ts: str | None = None,
        subtype: str | None = None,
        bot_id: str | None = None,
        app_id: str | None = None,
        client_msg_id: str | None = None,
        reply_broadcast: bool = False,
        ephemeral_to: str | None = None,
    ) -> _Stored:
        """Store a new message and return its record. A ``thread_ts`` naming a reply means its parent."""
        with self.lock:
            if thread_ts is not None:
                parent = self._messages.get(channel, {}).get(thread_ts)
                if parent is not None and parent.thread_ts not in (None, parent.ts):
                    thread_ts = parent.thread_ts
            stored = _Stored(
                channel=channel,
                ts=self.next_ts(),
                user=user,
                text=text,
                blocks=_with_block_ids(blocks),
                attachments=copy.deepcopy(list(attachments)),
                files=[dict(item) for item in files],
                thread_ts=thread_ts,
                subtype=subtype,
                bot_id=bot_id,
                app_id=app_id,
                client_msg_id=client_msg_id,
                reply_broadcast=reply_broadcast and thread_ts is not None,
                ephemeral_to=ephemeral_to,
            )
            if ephemeral_to is not None:
                self._ephemeral.append(stored)
            else:
                if thread_ts is not None and thread_ts in self._messages[channel]:
                    parent = self._messages[channel][thread_ts]
                    if parent.thread_ts is None:
                        parent.thread_ts = parent.ts
                self._messages[channel][stored.ts] = stored
        self.notify()
        return stored

    def edit(
        self,
        channel: str,
        ts: str,
        *,
        editor: str,
        text: str | None,
        blocks: Sequence[Any] | None,
        attachments: Sequence[Any] | None,
    ) -> _Stored:
        """Edit a message, keeping its earlier version in its history. ``None`` keeps a part as it was."""
        with self.lock:
            stored = self.get(channel, ts)
            stored.history.append(
                MessageVersion(text=stored.text, blocks=tuple(stored.blocks), edited_ts=stored.edited_ts)
            )
            if text is not None:
                stored.text = text
            if blocks is not None:
                stored.blocks = _with_block_ids(blocks)
            if attachments is not None:
                stored.attachments = copy.deepcopy(list(attachments))
            stored.edited_ts = self.next_ts()
            stored.edited_by = editor
        self.notify()
        return stored

    def delete(self, channel: str, ts: str) -> _Stored:
        """Delete a message; a thread parent with replies stays as a tombstone, as in Slack."""
        with self.lock:
            stored = self.get(channel, ts)
            stored.deleted = True
            if stored.thread_ts == stored.ts and self._replies(channel, ts):
                stored.tombstone = True
        self.notify()
        return stored

    def react(self, channel: str, ts: str, name: str, user: str) -> None:
        """Add ``user``'s reaction ``name``; ``already_reacted`` if it is there already."""
        with self.lock:
            stored = self.get(channel, ts)
            users = stored.reactions.setdefault(name, [])
            if user in users:
                raise SlackError("already_reacted")
            users.append(user)
        self.notify()

    def unreact(self, channel: str, ts: str, name: str, user: str) -> None:
        """Remove ``user``'s reaction ``name``; ``no_reaction`` if it is not there."""
        with self.lock:
            stored = self.get(channel, ts)
            users = stored.reactions.get(name, [])
            if user not in users:
                raise SlackError("no_reaction")
            users.remove(user)
            if not users:
                del stored.reactions[name]
        self.notify()

    def _replies(self, channel: str, thread_ts: str) -> list[_Stored]:
        return sorted(
            (
                stored
                for stored in self._messages.get(channel, {}).values()
                if stored.thread_ts == thread_ts and stored.ts != thread_ts and not stored.deleted
            ),
            key=lambda stored: ts_value(stored.ts),
        )

    def thread_records(self, channel: str, thread_ts: str) -> list[_Stored]:
        """The thread's parent followed by its live replies, oldest first."""
        with self.lock:
            parent = self._find(channel, thread_ts)
            if parent is None:
                raise SlackError("thread_not_found")
            if parent.thread_ts not in (None, parent.ts):
                return [parent]
            return [parent, *self._replies(channel, thread_ts)]

    def history_records(self, channel: str) -> list[_Stored]:
        """The channel's top-level messages (and replies broadcast to it), newest first."""
        with self.lock:
            visible = [
                stored
                for stored in self._messages.get(channel, {}).values()
                if (stored.thread_ts in (None, stored.ts) or stored.reply_broadcast)
                and (not stored.deleted or stored.tombstone)
            ]
            return sorted(visible, key=lambda stored: ts_value(stored.ts), reverse=True)

    def ephemeral_records(self, channel: str, user: str | None = None) -> list[_Stored]:
        with self.lock:
            return [
                stored
                for stored in self._ephemeral
                if stored.channel == channel and (user is None or stored.ephemeral_to == user)
            ]

    # --- files ----------------------------------------------------------------------------------------

    def start_upload(self, *, user: str, filename: str, length: int) -> str:
        """Reserve a file id for an upload (``files.getUploadURLExternal``)."""
        with self.lock:
            file_id = self.new_id("F")
            self._pending_uploads[file_id] = {
                "user": user,
                "filename": filename,
                "length": length,
                "content": None,
            }
            return file_id

    def receive_upload(self, file_id: str, content: bytes) -> bool:
        """Store the bytes posted to an upload URL; ``False`` when the URL names no pending upload."""
        with self.lock:
            pending = self._pending_uploads.get(file_id)
            if pending is None:
                return False
            pending["content"] = content
            return True

    def finish_upload(self, file_id: str, *, title: str | None, user: str) -> StoredFile:
        """Turn an uploaded file into a workspace file (``files.completeUploadExternal``)."""
        with self.lock:
            pending = self._pending_uploads.get(file_id)
            if pending is None or pending["user"] != user:
                raise SlackError("file_not_found")
            if pending["content"] is None:
                raise SlackError("file_upload_not_found")
            del self._pending_uploads[file_id]
            return self.add_file(
                name=pending["filename"],
                title=title or pending["filename"],
                user=user,
                content=pending["content"],
            )

    def add_file(
        self, *, name: str, user: str, content: bytes, title: str | None = None, mimetype: str | None = None
    ) -> StoredFile:
        """Store a file (a person's attachment, or a finished upload)."""
        with self.lock:
            file_id = self.new_id("F")
            filetype = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
            stored = StoredFile(
                id=file_id,
                name=name,
                title=title or name,
                mimetype=mimetype or _MIMETYPES.get(filetype, "application/octet-stream"),
                filetype=filetype,
                user=user,
                created=int(time.time()),
                content=content,
                url_private=f"{self.base_url}files-pri/{self.team_id}-{file_id}/{name}",
            )
            self._files[file_id] = stored
        self.notify()
        return stored

    def file(self, file_id: str) -> StoredFile | None:
        with self.lock:
            return self._files.get(file_id)

    # --- views ----------------------------------------------------------------------------------------

    def snapshot(self, stored: _Stored) -> Message:
        """A frozen copy of a stored message."""
        with self.lock:
            return Message(
                channel=stored.channel,
                ts=stored.ts,
                user=stored.user,
                bot_id=stored.bot_id,
                text=stored.text,
                blocks=tuple(copy.deepcopy(stored.blocks)),
                attachments=tuple(copy.deepcopy(stored.attachments)),
                files=tuple(dict(item) for item in stored.files),
                thread_ts=stored.thread_ts,
                subtype="tombstone" if stored.tombstone else stored.subtype,
                reactions={name: tuple(users) for name, users in stored.reactions.items()},
                history=tuple(stored.history),
                edited_ts=stored.edited_ts,
                deleted=stored.deleted,
                ephemeral_to=stored.ephemeral_to,
            )

    def message_view(self, channel: str, ts: str) -> Message:
        """A snapshot of any message ever posted at ``ts``, deleted ones included (``KeyError`` if none)."""
        with self.lock:
            stored = self._messages.get(channel, {}).get(ts)
            if stored is None:
                stored = next((e for e in self._ephemeral if e.channel == channel and e.ts == ts), None)
            if stored is None:
                raise KeyError(f"no message {ts} was ever posted in {channel}")
            return self.snapshot(stored)

    def all_records(self, channel: str) -> list[_Stored]:
        """Every message ever stored in ``channel`` (deleted ones too), oldest first."""
        with self.lock:
            return sorted(self._messages.get(channel, {}).values(), key=lambda stored: ts_value(stored.ts))

    def to_api(self, stored: _Stored) -> dict[str, Any]:
        """A message as ``conversations.history``/``replies`` and events show it."""
        with self.lock:
            if stored.tombstone:
                message: dict[str, Any] = {
                    "type": "message",
                    "subtype": "tombstone",
                    "text": TOMBSTONE_TEXT,
                    "user": SLACKBOT_USER_ID,
                    "hidden": True,
                    "ts": stored.ts,
                    "thread_ts": stored.ts,
                }
            else:
                message = {"type": "message", "ts": stored.ts, "text": stored.text}
                if stored.user is not None:
                    message["user"] = stored.user
                if stored.subtype is not None:
                    message["subtype"] = stored.subtype
                elif stored.reply_broadcast:
                    message["subtype"] = "thread_broadcast"
                if stored.bot_id is not None:
                    message["bot_id"] = stored.bot_id
                    message["app_id"] = stored.app_id
                    bot = self._users.get(stored.user or "")
                    message["bot_profile"] = {
                        "id": stored.bot_id,
                        "app_id": stored.app_id,
                        "name": bot.name if bot else "bot",
                        "deleted": False,
                        "team_id": self.team_id,
                    }
                if stored.client_msg_id is not None:
                    message["client_msg_id"] = stored.client_msg_id
                if stored.blocks:
                    message["blocks"] = copy.deepcopy(stored.blocks)
                if stored.attachments:
                    message["attachments"] = copy.deepcopy(stored.attachments)
                if stored.files:
                    message["files"] = [dict(item) for item in stored.files]
                    message["upload"] = False
                    message["display_as_bot"] = False
                message["team"] = self.team_id
                if stored.edited_ts is not None:
                    message["edited"] = {"user": stored.edited_by, "ts": stored.edited_ts}
                if stored.thread_ts is not None:
                    message["thread_ts"] = stored.thread_ts
            if stored.thread_ts is not None and stored.thread_ts != stored.ts:
                parent = self._messages.get(stored.channel, {}).get(stored.thread_ts)
                if parent is not None and parent.user is not None:
                    message["parent_user_id"] = parent.user
            elif stored.thread_ts == stored.ts:
                replies = self._replies(stored.channel, stored.ts)
                reply_users = list(dict.fromkeys(reply.user for reply in replies if reply.user))
                message.update(
                    {
                        "reply_count": len(replies),
                        "reply_users_count": len(reply_users),
                        "latest_reply": replies[-1].ts if replies else stored.ts,
                        "reply_users": reply_users,
                        "is_locked": False,
                        "subscribed": False,
                    }
                )
            if stored.reactions and not stored.tombstone:
                message["reactions"] = [
                    {"name": name, "users": list(users), "count": len(users)}
                    for name, users in stored.reactions.items()
                ]
            return message

    def render(self, stored: _Stored) -> str:
        """What a person reads for one message: its blocks (if any, else its text), with names resolved."""
        if stored.tombstone:
            return TOMBSTONE_TEXT
        shown = render_blocks(stored.blocks, self.name_of) if stored.blocks else ""
        if not shown:
            shown = render_mrkdwn(stored.text, self.name_of)
        for attachment in stored.attachments:
            if isinstance(attachment, dict):
                body = attachment.get("text") or attachment.get("fallback") or ""
                if attachment.get("blocks"):
                    body = render_blocks(attachment["blocks"], self.name_of)
                if body:
                    shown += ("\n" if shown else "") + "| " + str(body).replace("\n", "\n| ")
        for item in stored.files:
            shown += ("\n" if shown else "") + f"[file: {item.get('name', item.get('id', ''))}]"
        return shown

    def render_thread(self, channel: str, thread_ts: str, *, viewer: str | None = None) -> str:
        """The thread as plain text, as a person sees it in Slack (see ``SlackStandIn.render_thread``)."""
        with self.lock:
            conversation = self.channel(channel)
            title = (
                f"@{self.name_of(conversation.im_user or '')}"
                if conversation.kind == "im"
                else f"#{conversation.name}"
            )
            lines = [f"{title} · thread {thread_ts}"]
            records = self.thread_records(channel, thread_ts)
            if viewer is not None:
                records = sorted(
                    [
                        *records,
                        *(e for e in self.ephemeral_records(channel, viewer) if e.thread_ts == thread_ts),
                    ],
                    key=lambda stored: ts_value(stored.ts),
                )
            for index, stored in enumerate(records):
                author = self.name_of(stored.user or "") or stored.user or stored.bot_id or "unknown"
                if stored.tombstone:
                    author = "Slackbot"
                marks = ""
                if stored.edited_ts is not None and not stored.tombstone:
                    marks += " (edited)"
                if stored.ephemeral_to is not None:
                    marks += " (only visible to you)"
                indent = "" if index == 0 else "  ↳ "
                body = self.render(stored).replace("\n", "\n" + " " * (len(indent) + 2))
                lines.append(f"{indent}{author}{marks}: {body}")
                if stored.reactions and not stored.tombstone:
                    pad = " " * (len(indent) + 2)
                    lines.append(
                        pad + "  ".join(f":{name}: {len(users)}" for name, users in stored.reactions.items())
                    )
            return "\n".join(lines)


def _with_block_ids(blocks: Sequence[Any]) -> list[Any]:
    """A copy of ``blocks`` where every block has a ``block_id``: Slack assigns one to blocks sent without."""
    copied = copy.deepcopy(list(blocks))
    for block in copied:
        if isinstance(block, dict) and "block_id" not in block:
            block["block_id"] = secrets.token_urlsafe(4)
    return copied


_MIMETYPES = {
    "txt": "text/plain",
    "md": "text/markdown",
    "py": "text/x-python",
    "json": "application/json",
    "png": "image/png",
    "jpg": "image/jpeg",
    "pdf": "application/pdf",
    "diff": "text/x-diff",
    "patch": "text/x-diff",
}
