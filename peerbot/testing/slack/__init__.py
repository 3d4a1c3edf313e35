"""A local Slack for tests and the offline demo: Web API, Socket Mode and Events API, as strict as Slack.

Slack has no maintained emulator; like Bolt's own tests this serves a local Web API, plus the Socket Mode
websocket and the signed HTTP requests Slack sends, so the real ``slack_sdk`` and ``slack_bolt`` run
against it unchanged::

    with SlackStandIn() as slack:
        person = slack.add_user("alice")
        channel = slack.add_channel("general")
        client = WebClient(token=slack.bot_token, base_url=slack.api_url)
        event = slack.app_mention(person, channel, f"{slack.mention} fix the tests")
        slack.send_event("http://127.0.0.1:3000/slack/events", event).wait()
        print(slack.render_thread(channel, event["event"]["ts"]))

Modules: :mod:`.server` (the stand-in), :mod:`.webapi` (the methods), :mod:`.workspace` (the state),
:mod:`.blocks` (Block Kit checks and rendering), :mod:`.events` (payloads, signatures, deliveries),
:mod:`.emoji` (reaction names).
"""

from peerbot.testing.slack.blocks import render_blocks, render_mrkdwn, validate_blocks
from peerbot.testing.slack.events import Attempt, Delivery, sign
from peerbot.testing.slack.server import (
    SLACK_MAX_EVENT_RETRIES,
    ApiCall,
    SlackStandIn,
    SlackStandInError,
)
from peerbot.testing.slack.workspace import Channel, Message, MessageVersion, User

__all__ = [
    "SLACK_MAX_EVENT_RETRIES",
    "ApiCall",
    "Attempt",
    "Channel",
    "Delivery",
    "Message",
    "MessageVersion",
    "SlackStandIn",
    "SlackStandInError",
    "User",
    "render_blocks",
    "render_mrkdwn",
    "sign",
    "validate_blocks",
]
