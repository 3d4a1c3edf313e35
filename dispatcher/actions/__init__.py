"""Interactivity listeners: the Stop button (status message) and the Continue button (paused message)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext

from peerbot.dispatcher.service import Dispatcher
from peerbot.slack_messages import ACTION_CONTINUE, ACTION_STOP


def register(app: AsyncApp, dispatcher: Dispatcher) -> None:
    """Route both buttons to :meth:`Dispatcher.on_button`; their value is the Conversation's name."""

    async def on_button(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await dispatcher.on_button(body, context, ack)

    app.action(ACTION_STOP)(on_button)
    app.action(ACTION_CONTINUE)(on_button)
