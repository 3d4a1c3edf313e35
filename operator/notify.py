"""Telling the person in the thread what the operator saw (a failure, a timeout, a cancel).

The worker reports its own outcomes; the operator speaks only when the worker could not (its pod was
killed, evicted, never started) or when it carried out a cancel. Slack failures are logged and never
stop the status from being recorded: the status is the record, the message a courtesy on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.logs import get_logger
from peerbot.planner import Notify
from peerbot.resilience import CircuitBreaker, CircuitOpen, post_with_fallback

log = get_logger(__name__)
#: Reactions that may already be there (Slack answers already_reacted), which is fine.
_HARMLESS = {"already_reacted", "no_reaction"}


async def notify_thread(
    slack: AsyncWebClient,
    channel: str,
    thread_ts: str,
    action: Notify,
    *,
    breaker: CircuitBreaker | None = None,
    on_fallback: Callable[[str], None] = lambda reason: None,
    reactions: bool = True,
) -> bool:
    """Post ``action.text`` in the thread and add its reaction; ``True`` when the message was posted.

    A message Slack rejects (``msg_too_long``...) is re-sent as plain text within limits and counted through
    ``on_fallback``; while Slack's ``breaker`` is open nothing is tried (logged). ``reactions=False``
    (``ENABLE_STATUS_REACTIONS=false``) leaves the reaction out.
    """
    posted = False
    try:
        await post_with_fallback(
            slack,
            "chat.postMessage",
            {"channel": channel, "thread_ts": thread_ts, "text": action.text},
            on_fallback=on_fallback,
            breaker=breaker,
            channel=channel,
            thread=thread_ts,
        )
        posted = True
        if reactions and action.reaction and action.message_ts:
            await slack.reactions_add(
                channel=channel, timestamp=action.message_ts, name=action.reaction.value
            )
    except SlackApiError as error:
        code = error.response.get("error") if error.response is not None else None
        if code not in _HARMLESS:
            log.warning("slack notification failed", channel=channel, thread=thread_ts, error=code)
    except CircuitOpen as error:
        log.warning("slack notification skipped", channel=channel, thread=thread_ts, error=str(error))
    except OSError as error:
        log.warning("slack unreachable", channel=channel, thread=thread_ts, error=str(error))
    return posted
