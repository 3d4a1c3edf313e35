"""What ``peerbot demo`` prints: a timed transcript, and the Slack thread shown live as a person sees it.

:class:`Transcript` writes every line to the terminal (unless quiet) and keeps it for ``--transcript``;
lines come from the demo's event loop and from :class:`ThreadView`'s thread, so writing is locked.

Two kinds of timed lines make up the story:

- ``│`` lines are what people in the Slack thread see: messages, edits of the status message, reactions;
- ``·`` lines are what happens behind it: the dispatcher, the operator, the kubelet stand-in, the worker.

:class:`ThreadView` follows one thread in the Slack stand-in: it wakes on every change the stand-in makes
(no polling) and prints what changed, each edit of a message included, since Slack shows every edit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from peerbot.testing.slack import Message, SlackStandIn

#: Reactions Peerbot uses, as Slack draws them.
EMOJI: Final = {
    "eyes": "👀",
    "gear": "⚙️",
    "white_check_mark": "✅",
    "x": "❌",
    "hourglass_flowing_sand": "⏳",
    "octagonal_sign": "🛑",
}
#: Width of the rule under section titles.
RULE_WIDTH: Final = 100
#: How long :class:`ThreadView` waits for a change before checking whether it should stop. It is woken
#: by every change and by :meth:`ThreadView.stop`, so this only bounds a missed wake-up.
WAKE_SECONDS: Final = 5.0
#: Indent of continuation lines under a timed line.
INDENT: Final = " " * 11


class Transcript:
    """The demo's output: timed lines and sections, to the terminal and kept in memory.

    Args:
        echo: where lines are printed as they happen (``None``: nowhere, for ``--quiet``).
        started: the moment times count from (``time.monotonic()``).
    """

    def __init__(self, echo: TextIO | None, *, started: float | None = None) -> None:
        self.echo = echo
        self.started = time.monotonic() if started is None else started
        self._lines: list[str] = []
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.started

    @property
    def text(self) -> str:
        """Everything written so far."""
        with self._lock:
            return "\n".join(self._lines) + ("\n" if self._lines else "")

    def write(self, text: str = "") -> None:
        """Write lines as they are (no time)."""
        with self._lock:
            for line in text.split("\n"):
                self._lines.append(line.rstrip())
                if self.echo is not None:
                    print(line.rstrip(), file=self.echo, flush=True)

    def _timed(self, mark: str, text: str) -> None:
        first, *rest = text.split("\n")
        lines = [f"{self.elapsed:5.1f}s {mark} {first}", *(f"{INDENT}{line}" for line in rest)]
        self.write("\n".join(lines))

    def slack(self, text: str) -> None:
        """Something people in the thread see (a ``│`` line)."""
        self._timed("│", text)

    def event(self, who: str, text: str) -> None:
        """Something behind the thread (a ``·`` line): ``who`` is the part that did it."""
        self._timed("·", f"{who}: {text}")

    def section(self, title: str) -> None:
        """A titled section."""
        self.write(f"\n{title}\n{'─' * min(RULE_WIDTH, max(len(title), 20))}")

    def save(self, path: Path) -> None:
        """Write the whole transcript to ``path``."""
        path.write_text(self.text, encoding="utf-8")


@dataclass
class _Seen:
    """What the view has shown of one message."""

    versions: int
    reactions: dict[str, int] = field(default_factory=dict)


def _indented(body: str) -> str:
    return body.replace("\n", "\n  ")


class ThreadView:
    """Shows one Slack thread live in a :class:`Transcript`, from a background thread.

    Use :meth:`catch_up` to show every change made so far right now (before printing something that must
    come after it), and :meth:`stop` at the end.
    """

    def __init__(self, slack: SlackStandIn, channel: str, thread_ts: str, transcript: Transcript) -> None:
        self.slack = slack
        self.channel = channel
        self.thread_ts = thread_ts
        self.transcript = transcript
        self._seen: dict[str, _Seen] = {}
        self._step = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Show the thread as it is, then follow it in a background thread."""
        self.catch_up()
        self._thread = threading.Thread(target=self._follow, name="demo-thread-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Show the last changes and stop following (idempotent)."""
        self._stopping.set()
        self.slack.workspace.notify()
        if self._thread is not None:
            self._thread.join(WAKE_SECONDS * 2)
            self._thread = None
        self.catch_up()
        if self._failure is not None:
            raise RuntimeError(f"showing the Slack thread failed: {self._failure}") from self._failure

    def _follow(self) -> None:
        workspace = self.slack.workspace
        try:
            while not self._stopping.is_set():
                with workspace.changed:
                    workspace.changed.wait_for(
                        lambda: self._stopping.is_set() or self._changed(), timeout=WAKE_SECONDS
                    )
                self.catch_up()
        except BaseException as error:  # shown by stop(), in the demo's own thread
            self._failure = error

    def _messages(self) -> list[Message]:
        return self.slack.thread(self.channel, self.thread_ts)

    def _changed(self) -> bool:
        for message in self._messages():
            seen = self._seen.get(message.ts)
            counts = {name: len(users) for name, users in message.reactions.items()}
            if seen is None or seen.versions != message.edit_count + 1 or seen.reactions != counts:
                return True
        return False

    def catch_up(self) -> None:
        """Show every change since the last call (new messages, each edit, reactions)."""
        with self._step:
            for message in self._messages():
                self._show(message)

    def _author(self, message: Message) -> str:
        if message.user:
            return self.slack.workspace.name_of(message.user) or message.user
        return message.bot_id or "someone"

    def _show(self, message: Message) -> None:
        author = self._author(message)
        seen = self._seen.get(message.ts)
        versions = message.edit_count + 1
        if seen is None:
            seen = self._seen[message.ts] = _Seen(versions=versions)
            self.transcript.slack(f"{author}: {_indented(self.render(message))}")
        elif versions > seen.versions:
            texts = [version.text for version in message.history] + [message.text]
            for text in texts[seen.versions :]:
                self.transcript.slack(f"{author} ✎ {_indented(self.slack_text(text))}")
            seen.versions = versions
        counts = {name: len(users) for name, users in message.reactions.items()}
        for name in sorted(counts.keys() - seen.reactions.keys()):
            self.transcript.slack(f"+{EMOJI.get(name, '')} :{name}: on {author}'s message")
        for name in sorted(seen.reactions.keys() - counts.keys()):
            self.transcript.slack(f"−{EMOJI.get(name, '')} :{name}: taken off {author}'s message")
        seen.reactions = counts

    def render(self, message: Message) -> str:
        """A message's text as Slack shows it (blocks rendered, mentions resolved)."""
        workspace = self.slack.workspace
        return workspace.render(workspace.get(message.channel, message.ts))

    def slack_text(self, text: str) -> str:
        """A message's ``text`` field (its one-line notification form) with mentions resolved."""
        from peerbot.testing.slack import render_mrkdwn

        return render_mrkdwn(text, self.slack.workspace.name_of)
