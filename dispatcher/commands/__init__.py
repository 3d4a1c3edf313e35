"""Slash command listeners: ``/peerbot`` answers with how to use Peerbot (only the person sees it).

Work itself is asked for in a thread (a mention), where ``stop``, ``status`` and ``help`` are understood as
in-thread commands by :mod:`peerbot.dispatcher.rules`; a slash command has no thread to act on.
"""

from __future__ import annotations

from typing import Any, Final

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck

from peerbot.dispatcher.service import Dispatcher

#: The command as configured in the Slack app's manifest.
SLASH_COMMAND: Final = "/peerbot"


def register(app: AsyncApp, dispatcher: Dispatcher) -> None:
    async def on_command(ack: AsyncAck, command: dict[str, Any]) -> None:
        await dispatcher.on_slash_command(command, ack)

    app.command(SLASH_COMMAND)(on_command)
