"""People's new messages in the thread, as the text of the turn's first user message (pure).

Each message is labelled with who wrote it. Long messages are cut (the full text is saved as a file in the
workspace, and Claude is told where); shared files are listed with where they were saved, or why not.
A ``repo=owner/name`` in a message picks the repository the thread works on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from peerbot.worker.slack_io import ThreadMessage

#: One message longer than this is cut in the prompt; the full text is saved to a file.
MESSAGE_CHAR_LIMIT: Final = 20_000
#: All new messages together are cut at this many characters (the rest is in files).
TOTAL_CHAR_LIMIT: Final = 60_000
#: ``repo=owner/name`` (GitHub's owner and repository name rules), anywhere in a message.
REPOSITORY_REQUEST = re.compile(
    r"(?<![\w/])repo\s*=\s*`?([A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}?)`?(?=[\s,;:!?)]|\.(?:\s|$)|$)"
)
#: The bot's own mention, as :func:`peerbot.worker.slack_io.plain_text` renders it.
BOT_MENTION = re.compile(r"^\s*@peerbot\w*[:,]?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SavedFile:
    """Where a shared file ended up in the workspace (``path``), or why it is not there (``note``)."""

    path: Path | None
    note: str


def requested_repository(messages: Sequence[ThreadMessage]) -> str | None:
    """The repository the newest message naming one asks for (``repo=owner/name``)."""
    for message in reversed(messages):
        found = REPOSITORY_REQUEST.findall(message.text)
        if found:
            return str(found[-1])
    return None


def is_empty(message: ThreadMessage) -> bool:
    """A message with nothing to act on: only the mention (and whitespace), no files."""
    return not message.files and not BOT_MENTION.sub("", message.text).strip()


def safe_name(name: str) -> str:
    """A file name safe to use in a folder: letters, digits, ``.-_``; never hidden, never empty."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._") or "file"
    return cleaned[:100]


@dataclass(frozen=True)
class Inbox:
    """The user message text, and the full texts of cut messages to save (file name -> text)."""

    text: str
    long_texts: dict[str, str]


def compose(
    messages: Sequence[ThreadMessage],
    *,
    saved_files: Mapping[str, SavedFile],
    attachments_dir: Path,
    notes: Sequence[str] = (),
) -> Inbox:
    """The turn's first user message: Peerbot's notes, then each new message with its author and files."""
    parts = list(notes)
    long_texts: dict[str, str] = {}
    used = 0
    if messages:
        parts.append("New messages in the Slack thread since your last answer, oldest first:")
    for message in messages:
        text = message.text.strip()
        label = f"{message.author} (<@{message.user}>)" if message.user else message.author
        if message.from_bot:
            label += " [a bot]"
        room = min(MESSAGE_CHAR_LIMIT, max(0, TOTAL_CHAR_LIMIT - used))
        if len(text) > room:
            name = f"message-{message.ts.replace('.', '-')}.txt"
            long_texts[name] = text
            text = (
                text[:room]
                + f"\n[... the message is {len(message.text):,} characters long; the full text is in "
                f"{attachments_dir / name}]"
            )
        used += len(text)
        lines = [f"--- {label} wrote:", text or "(no text)"]
        for shared in message.files:
            saved = saved_files.get(shared.id)
            where = saved.note if saved else "not saved"
            lines.append(f"[shared file: {shared.name}, {shared.mimetype}, {shared.size:,} bytes: {where}]")
        parts.append("\n".join(lines))
    return Inbox("\n\n".join(parts), long_texts)
