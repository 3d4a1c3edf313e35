"""Events API listeners: ``app_mention`` and ``message`` (every subtype; the rules decide what counts)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext

from peerbot.dispatcher.service import Dispatcher


def register(app: AsyncApp, dispatcher: Dispatcher) -> None:
    """Route mentions and messages to :meth:`Dispatcher.on_message_event`."""

    async def on_message(
        ack: AsyncAck, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await dispatcher.on_message_event(body, event, context, ack)

    app.event("app_mention")(on_message)
    app.event("message")(on_message)
