"""Telling the person in the thread what the operator saw (a failure, a timeout, a cancel).

The worker reports its own outcomes; the operator speaks only when the worker could not (its pod was
killed, evicted, never started) or when it carried out a cancel. Slack failures are logged and never
stop the status from being recorded: the status is the record, the message a courtesy on top of it.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.logs import get_logger
from peerbot.planner import Notify

log = get_logger(__name__)
#: Reactions that may already be there (Slack answers already_reacted), which is fine.
_HARMLESS = {"already_reacted", "no_reaction"}


async def notify_thread(slack: AsyncWebClient, channel: str, thread_ts: str, action: Notify) -> bool:
    """Post ``action.text`` in the thread and add its reaction; ``True`` when the message was posted."""
    posted = False
    try:
        await slack.chat_postMessage(channel=channel, thread_ts=thread_ts, text=action.text)
        posted = True
        if action.reaction and action.message_ts:
            await slack.reactions_add(
                channel=channel, timestamp=action.message_ts, name=action.reaction.value
            )
    except SlackApiError as error:
        code = error.response.get("error") if error.response is not None else None
        if code not in _HARMLESS:
            log.warning("slack notification failed", channel=channel, thread=thread_ts, error=code)
    except OSError as error:
        log.warning("slack unreachable", channel=channel, thread=thread_ts, error=str(error))
    return posted
