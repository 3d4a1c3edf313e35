"""The Slack stand-in against the real clients: slack_sdk (sync, async) and slack_bolt (HTTP, Socket Mode).

Every strict point has a test that fails if the stand-in accepted what Slack rejects, and (where there is a
limit) a test that the limit itself is still accepted, so the stand-in is not stricter than Slack either.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import constants
from peerbot.testing.slack import SlackStandIn, sign

FAST_DEADLINE = 0.3


def _error(excinfo: pytest.ExceptionInfo[SlackApiError]) -> str:
    return str(excinfo.value.response["error"])


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(*, value: str = "v", action_id: str = "approve", label: str = "Approve") -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": label},
                "action_id": action_id,
                "value": value,
            }
        ],
    }


# --- authentication ----------------------------------------------------------------------------------------


def test_auth_test_names_the_bot_and_team(slack_standin: SlackStandIn, slack_client: WebClient) -> None:
    answer = slack_client.auth_test()
    assert answer["user_id"] == slack_standin.bot_user_id
    assert answer["bot_id"] == slack_standin.bot_id
    assert answer["team_id"] == slack_standin.team_id
    assert answer["url"].startswith("https://")
    assert slack_standin.calls("auth.test")[0].token_kind == "bot"


def test_missing_token_is_not_authed(slack_standin: SlackStandIn) -> None:
    client = WebClient(base_url=slack_standin.api_url)
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel=slack_standin.public_channel, text="hi")
    assert _error(excinfo) == "not_authed"


def test_wrong_token_is_invalid_auth(slack_standin: SlackStandIn) -> None:
    client = WebClient(token="xoxb-1-2-not-a-real-token", base_url=slack_standin.api_url)
    with pytest.raises(SlackApiError) as excinfo:
        client.auth_test()
    assert _error(excinfo) == "invalid_auth"
    assert slack_standin.calls("auth.test")[0].token_kind is None


def _raw_post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (a local stand-in URL)
        url, data=body, headers={"Content-Type": content_type, **(headers or {})}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (a local stand-in URL)
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_a_token_inside_a_json_body_is_not_read(slack_standin: SlackStandIn) -> None:
    # Slack reads a JSON request's token only from the Authorization header.
    body = json.dumps(
        {"token": slack_standin.bot_token, "channel": slack_standin.public_channel, "text": "x"}
    )
    answer = _raw_post(slack_standin.api_url + "chat.postMessage", body.encode(), "application/json")
    assert answer == {"ok": False, "error": "not_authed"}


def test_a_token_in_a_form_body_is_read(slack_standin: SlackStandIn) -> None:
    form = f"token={slack_standin.bot_token}&channel={slack_standin.public_channel}&text=hello"
    answer = _raw_post(
        slack_standin.api_url + "chat.postMessage", form.encode(), "application/x-www-form-urlencoded"
    )
    assert answer["ok"] is True
    assert slack_standin.message(slack_standin.public_channel, answer["ts"]).text == "hello"


def test_app_and_bot_tokens_only_work_where_slack_allows_them(slack_standin: SlackStandIn) -> None:
    as_app = WebClient(token=slack_standin.app_token, base_url=slack_standin.api_url)
    with pytest.raises(SlackApiError) as excinfo:
        as_app.chat_postMessage(channel=slack_standin.public_channel, text="hi")
    assert _error(excinfo) == "not_allowed_token_type"
    as_bot = WebClient(token=slack_standin.bot_token, base_url=slack_standin.api_url)
    with pytest.raises(SlackApiError) as excinfo:
        as_bot.apps_connections_open(app_token=slack_standin.bot_token)
    assert _error(excinfo) == "not_allowed_token_type"
    url = as_app.apps_connections_open(app_token=slack_standin.app_token)["url"]
    assert url.startswith("ws://127.0.0.1:")
    assert "ticket=" in url


def test_an_unknown_method_is_404_unknown_method(slack_client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.api_call("chat.postMessages", json={"channel": "C1", "text": "x"})
    assert excinfo.value.response.status_code == 404
    assert _error(excinfo) == "unknown_method"


# --- posting: content limits -------------------------------------------------------------------------------


def test_json_and_form_bodies_both_post(slack_standin: SlackStandIn, slack_client: WebClient) -> None:
    channel = slack_standin.public_channel
    as_json = slack_client.chat_postMessage(channel=channel, text="fallback", blocks=[_section("*json*")])
    as_form = slack_client.api_call(
        "chat.postMessage", data={"channel": channel, "text": "f", "blocks": json.dumps([_section("form")])}
    )
    assert slack_standin.message(channel, as_json["ts"]).blocks[0]["text"]["text"] == "*json*"
    assert slack_standin.message(channel, as_form["ts"]).blocks[0]["text"]["text"] == "form"
    assert as_json["message"]["bot_id"] == slack_standin.bot_id


INVALID_BLOCKS = {
    "too many blocks": (
        [{"type": "divider"}] * (constants.SLACK_MAX_BLOCKS + 1),
        ["no more than 50 items allowed [json-pointer:/blocks]"],
    ),
    "section text too long": (
        [_section("x" * (constants.SLACK_MAX_SECTION_TEXT + 1))],
        [
            "failed to match all allowed schemas [json-pointer:/blocks/0/text]",
            "must be less than 3001 characters [json-pointer:/blocks/0/text/text]",
        ],
    ),
    "header too long": (
        [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "h" * (constants.SLACK_MAX_HEADER_TEXT + 1)},
            }
        ],
        ["must be less than 151 characters [json-pointer:/blocks/0/text/text]"],
    ),
    "button value too long": (
        [_button(value="v" * (constants.SLACK_MAX_BUTTON_VALUE + 1))],
        ["must be less than 2001 characters [json-pointer:/blocks/0/elements/0/value]"],
    ),
    "action_id too long": (
        [_button(action_id="a" * (constants.SLACK_MAX_ACTION_ID + 1))],
        ["must be less than 256 characters [json-pointer:/blocks/0/elements/0/action_id]"],
    ),
    "unknown block type": (
        [{"type": "sections", "text": {"type": "mrkdwn", "text": "x"}}],
        ["unsupported type: sections [json-pointer:/blocks/0/type]"],
    ),
    "button without text": (
        [{"type": "actions", "elements": [{"type": "button", "action_id": "a"}]}],
        ["missing required field: text [json-pointer:/blocks/0/elements/0]"],
    ),
    "empty section text": (
        [_section("")],
        [
            "failed to match all allowed schemas [json-pointer:/blocks/0/text]",
            "must be more than 0 characters [json-pointer:/blocks/0/text/text]",
        ],
    ),
    "header in mrkdwn": (
        [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}],
        ["must be one of plain_text [json-pointer:/blocks/0/text/type]"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID_BLOCKS))
def test_invalid_blocks_are_refused_with_slacks_messages(
    slack_client: WebClient, slack_standin: SlackStandIn, case: str
) -> None:
    blocks, messages = INVALID_BLOCKS[case]
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_postMessage(channel=slack_standin.public_channel, text="fallback", blocks=blocks)
    assert _error(excinfo) == "invalid_blocks"
    assert excinfo.value.response["errors"] == messages
    assert excinfo.value.response["response_metadata"]["messages"] == [f"[ERROR] {m}" for m in messages]
    assert slack_standin.messages(slack_standin.public_channel) == []


def test_blocks_exactly_at_the_limits_are_accepted(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    limits = [
        _section("x" * constants.SLACK_MAX_SECTION_TEXT),
        {"type": "header", "text": {"type": "plain_text", "text": "h" * constants.SLACK_MAX_HEADER_TEXT}},
        _button(value="v" * constants.SLACK_MAX_BUTTON_VALUE, action_id="a" * constants.SLACK_MAX_ACTION_ID),
    ]
    blocks = limits + [{"type": "divider"}] * (constants.SLACK_MAX_BLOCKS - len(limits))
    assert slack_client.chat_postMessage(channel=slack_standin.public_channel, text="t", blocks=blocks)["ok"]


def test_text_longer_than_40000_characters_is_msg_too_long(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_postMessage(channel=channel, text="x" * (constants.SLACK_MAX_MESSAGE_TEXT + 1))
    assert _error(excinfo) == "msg_too_long"
    assert slack_client.chat_postMessage(channel=channel, text="x" * constants.SLACK_MAX_MESSAGE_TEXT)["ok"]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing:UserWarning")
def test_a_message_without_text_or_blocks_is_no_text(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_postMessage(channel=slack_standin.public_channel, text="")
    assert _error(excinfo) == "no_text"


def test_blocks_that_are_not_json_are_invalid_blocks_format(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.api_call(
            "chat.postMessage",
            data={"channel": slack_standin.public_channel, "text": "t", "blocks": "[{oops"},
        )
    assert _error(excinfo) == "invalid_blocks_format"


# --- posting: where ----------------------------------------------------------------------------------------


def test_channels_the_bot_cannot_post_to(slack_client: WebClient, slack_standin: SlackStandIn) -> None:
    def post(channel: str) -> str:
        with pytest.raises(SlackApiError) as excinfo:
            slack_client.chat_postMessage(channel=channel, text="hi")
        return _error(excinfo)

    assert post("C0NOSUCH00") == "channel_not_found"
    lonely_public = slack_standin.add_channel("no-bot", members=[slack_standin.human])
    assert post(lonely_public) == "not_in_channel"
    lonely_private = slack_standin.add_channel("no-bot-private", private=True, members=[slack_standin.human])
    assert post(lonely_private) == "channel_not_found"
    slack_standin.archive(slack_standin.public_channel)
    assert post(slack_standin.public_channel) == "is_archived"


def test_posting_in_the_im_and_the_private_channel(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    for channel in (slack_standin.im_channel, slack_standin.private_channel):
        ts = slack_client.chat_postMessage(channel=channel, text="psst")["ts"]
        assert slack_standin.message(channel, ts).user == slack_standin.bot_user_id


def test_timestamps_are_unique_increasing_seconds_dot_micros(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    stamps = [
        slack_client.chat_postMessage(channel=slack_standin.public_channel, text=str(i))["ts"]
        for i in range(30)
    ]
    assert all(re.fullmatch(r"[0-9]{10}\.[0-9]{6}", ts) for ts in stamps)
    assert stamps == sorted(stamps, key=float)
    assert len(set(stamps)) == len(stamps)


# --- editing, deleting, reacting ---------------------------------------------------------------------------


def test_updates_keep_an_edit_history(slack_client: WebClient, slack_standin: SlackStandIn) -> None:
    channel = slack_standin.public_channel
    ts = slack_client.chat_postMessage(channel=channel, text="Working…")["ts"]
    for step in range(3):
        answer = slack_client.chat_update(
            channel=channel, ts=ts, text=f"step {step}", blocks=[_section(f"*step {step}*")]
        )
        assert answer["ts"] == ts
        assert answer["message"]["edited"]["user"] == slack_standin.bot_user_id
    message = slack_standin.message(channel, ts)
    assert message.edit_count == 3
    assert [version.text for version in message.history] == ["Working…", "step 0", "step 1"]
    assert len(slack_standin.calls("chat.update")) == 3


def test_updating_what_is_not_there_or_not_yours(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_update(channel=channel, ts="1700000000.000001", text="x")
    assert _error(excinfo) == "message_not_found"
    theirs = slack_standin.post_message(slack_standin.human, channel, "mine")
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_update(channel=channel, ts=theirs.ts, text="x")
    assert _error(excinfo) == "cant_update_message"
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_delete(channel=channel, ts=theirs.ts)
    assert _error(excinfo) == "cant_delete_message"


def test_deleting_a_thread_parent_leaves_a_tombstone(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    parent = slack_client.chat_postMessage(channel=channel, text="parent")["ts"]
    reply = slack_client.chat_postMessage(channel=channel, text="reply", thread_ts=parent)["ts"]
    lone = slack_client.chat_postMessage(channel=channel, text="lone")["ts"]
    slack_client.chat_delete(channel=channel, ts=parent)
    slack_client.chat_delete(channel=channel, ts=lone)
    history = slack_client.conversations_history(channel=channel)["messages"]
    assert [(m["ts"], m.get("subtype")) for m in history] == [(parent, "tombstone")]
    assert [m["ts"] for m in slack_client.conversations_replies(channel=channel, ts=parent)["messages"]] == [
        parent,
        reply,
    ]
    assert slack_standin.message(channel, lone).deleted
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_update(channel=channel, ts=lone, text="back")
    assert _error(excinfo) == "message_not_found"


def test_reactions_as_strict_as_slack(slack_client: WebClient, slack_standin: SlackStandIn) -> None:
    channel = slack_standin.public_channel
    ts = slack_standin.post_message(slack_standin.human, channel, "please fix it").ts

    def react(name: str, remove: bool = False) -> str:
        call = slack_client.reactions_remove if remove else slack_client.reactions_add
        with pytest.raises(SlackApiError) as excinfo:
            call(channel=channel, timestamp=ts, name=name)
        return _error(excinfo)

    slack_client.reactions_add(channel=channel, timestamp=ts, name="eyes")
    assert react("eyes") == "already_reacted"
    assert react("gear", remove=True) == "no_reaction"
    assert react("not_an_emoji_at_all") == "invalid_name"
    assert react(":eyes:") == "invalid_name"
    slack_client.reactions_add(channel=channel, timestamp=ts, name="thumbsup::skin-tone-3")
    slack_standin.add_emoji("peerbot-working")
    slack_client.reactions_add(channel=channel, timestamp=ts, name="peerbot-working")
    slack_client.reactions_remove(channel=channel, timestamp=ts, name="eyes")
    assert dict(slack_standin.message(channel, ts).reactions) == {
        "thumbsup::skin-tone-3": (slack_standin.bot_user_id,),
        "peerbot-working": (slack_standin.bot_user_id,),
    }
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.reactions_add(channel=channel, timestamp="1700000000.000001", name="eyes")
    assert _error(excinfo) == "message_not_found"


def test_ephemeral_messages_reach_only_their_person(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    parent = slack_standin.post_message(slack_standin.human, channel, "hello").ts
    slack_client.chat_postEphemeral(
        channel=channel, user=slack_standin.human, text="only you", thread_ts=parent
    )
    outsider = slack_standin.add_user("bob")
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_postEphemeral(channel=slack_standin.private_channel, user=outsider, text="x")
    assert _error(excinfo) == "user_not_in_channel"
    assert len(slack_client.conversations_replies(channel=channel, ts=parent)["messages"]) == 1
    assert "only you" not in slack_standin.render_thread(channel, parent)
    assert "(only visible to you): only you" in slack_standin.render_thread(
        channel, parent, viewer=slack_standin.human
    )


# --- reading -----------------------------------------------------------------------------------------------


def _thread(slack_standin: SlackStandIn, replies: int) -> tuple[str, list[str]]:
    channel = slack_standin.public_channel
    parent = slack_standin.post_message(slack_standin.human, channel, "parent").ts
    stamps = [
        slack_standin.post_message(slack_standin.human, channel, f"r{i}", thread_ts=parent).ts
        for i in range(replies)
    ]
    return parent, stamps


def test_replies_paginate_with_cursors_like_slack(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    parent, replies = _thread(slack_standin, 5)
    # slack_sdk's SlackResponse pages in place: read each page while iterating.
    pages = [
        (
            [m["ts"] for m in page["messages"]],
            page["has_more"],
            page.get("response_metadata", {}).get("next_cursor"),
        )
        for page in slack_client.conversations_replies(
            channel=slack_standin.public_channel, ts=parent, limit=3
        )
    ]
    assert [stamps for stamps, _, _ in pages] == [[parent, *replies[:2]], replies[2:5]]
    assert pages[0][1] is True
    assert pages[0][2]
    assert pages[1][1] is False
    assert not pages[1][2]
    first = slack_client.conversations_replies(channel=slack_standin.public_channel, ts=parent, limit=3)
    assert first["messages"][0]["reply_count"] == 5
    assert first["messages"][1]["parent_user_id"] == slack_standin.human


def test_replies_oldest_latest_inclusive(slack_client: WebClient, slack_standin: SlackStandIn) -> None:
    parent, replies = _thread(slack_standin, 4)
    channel = slack_standin.public_channel

    def stamps(**arguments: Any) -> list[str]:
        return [
            m["ts"]
            for m in slack_client.conversations_replies(channel=channel, ts=parent, **arguments)["messages"]
        ]

    # The parent always leads the first page, whatever oldest says.
    assert stamps(oldest=replies[1]) == [parent, replies[2], replies[3]]
    assert stamps(oldest=replies[1], inclusive=True) == [parent, *replies[1:]]
    assert stamps(oldest=replies[0], latest=replies[2], inclusive=True) == [parent, *replies[:3]]
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.conversations_replies(channel=channel, ts="1700000000.000001")
    assert _error(excinfo) == "thread_not_found"
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.conversations_replies(channel=channel, ts=parent, cursor="bm90LWEtY3Vyc29y")
    assert _error(excinfo) == "invalid_cursor"


def test_history_is_newest_first_without_replies(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    first = slack_client.chat_postMessage(channel=channel, text="one")["ts"]
    slack_client.chat_postMessage(channel=channel, text="in thread", thread_ts=first)
    broadcast = slack_client.chat_postMessage(
        channel=channel, text="to all", thread_ts=first, reply_broadcast=True
    )["ts"]
    second = slack_client.chat_postMessage(channel=channel, text="two")["ts"]
    pages = [
        [m["ts"] for m in page["messages"]]
        for page in slack_client.conversations_history(channel=channel, limit=2)
    ]
    assert pages == [[second, broadcast], [first]]
    assert slack_client.conversations_history(channel=channel)["messages"][1]["subtype"] == "thread_broadcast"


def test_conversation_and_user_info(slack_client: WebClient, slack_standin: SlackStandIn) -> None:
    public = slack_client.conversations_info(channel=slack_standin.public_channel)["channel"]
    assert public["name"] == "general"
    assert public["is_private"] is False
    assert public["is_member"] is True
    assert (
        slack_client.conversations_info(channel=slack_standin.private_channel)["channel"]["is_private"]
        is True
    )
    im = slack_client.conversations_info(channel=slack_standin.im_channel)["channel"]
    assert im["is_im"] is True
    assert im["user"] == slack_standin.human
    user = slack_client.users_info(user=slack_standin.human)["user"]
    assert user["name"] == "alice"
    assert user["is_bot"] is False
    assert user["profile"]["real_name"] == "Alice Example"
    assert slack_client.users_info(user=slack_standin.bot_user_id)["user"]["is_bot"] is True
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.users_info(user="U0NOSUCH00")
    assert _error(excinfo) == "user_not_found"


def test_render_thread_shows_what_a_person_reads(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    mention = slack_standin.app_mention(
        slack_standin.human, channel, f"{slack_standin.mention} fix <https://x.example|the bug>"
    )
    parent = mention["event"]["ts"]
    slack_client.reactions_add(channel=channel, timestamp=parent, name="eyes")
    status = slack_client.chat_postMessage(channel=channel, thread_ts=parent, text="working")["ts"]
    slack_client.chat_update(
        channel=channel,
        ts=status,
        text="done",
        blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "Done"}},
            _section(f"PR ready for <@{slack_standin.human}>"),
        ],
    )
    assert slack_standin.render_thread(channel, parent) == (
        f"#general · thread {parent}\n"
        "alice: @peerbot fix the bug\n"
        "  :eyes: 1\n"
        "  ↳ peerbot (edited): Done\n"
        "      PR ready for @alice"
    )


# --- rate limits -------------------------------------------------------------------------------------------


def test_a_forced_429_carries_retry_after_and_ratelimited(
    slack_standin: SlackStandIn, slack_client: WebClient
) -> None:
    slack_standin.fail_next("chat.update", retry_after=7)
    ts = slack_client.chat_postMessage(channel=slack_standin.public_channel, text="x")["ts"]
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_update(channel=slack_standin.public_channel, ts=ts, text="y")
    assert excinfo.value.response.status_code == 429
    assert excinfo.value.response.headers["Retry-After"] == "7"
    assert excinfo.value.response.data == {"ok": False, "error": "ratelimited"}
    assert slack_client.chat_update(channel=slack_standin.public_channel, ts=ts, text="y")["ok"]


def test_per_minute_limit(slack_standin: SlackStandIn, slack_client: WebClient) -> None:
    slack_standin.limit("chat.postMessage", per_minute=3)
    for i in range(3):
        slack_client.chat_postMessage(channel=slack_standin.public_channel, text=str(i))
    with pytest.raises(SlackApiError) as excinfo:
        slack_client.chat_postMessage(channel=slack_standin.public_channel, text="4")
    assert excinfo.value.response.status_code == 429
    assert 1 <= int(excinfo.value.response.headers["Retry-After"]) <= 60
    assert [call.status for call in slack_standin.calls("chat.postMessage")] == [200, 200, 200, 429]


def test_slack_sdk_retry_handler_recovers_honouring_retry_after(slack_standin: SlackStandIn) -> None:
    client = WebClient(
        token=slack_standin.bot_token,
        base_url=slack_standin.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack_standin.fail_next("chat.postMessage", retry_after=1)
    assert client.chat_postMessage(channel=slack_standin.public_channel, text="hi")["ok"]
    refused, accepted = slack_standin.calls("chat.postMessage")
    assert (refused.status, accepted.status) == (429, 200)
    assert accepted.at - refused.at >= 1.0


async def test_async_retry_handler_recovers(slack_standin: SlackStandIn) -> None:
    client = AsyncWebClient(
        token=slack_standin.bot_token,
        base_url=slack_standin.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
    )
    slack_standin.fail_next("reactions.add", times=2, retry_after=0)
    ts = (await client.chat_postMessage(channel=slack_standin.public_channel, text="x"))["ts"]
    assert (await client.reactions_add(channel=slack_standin.public_channel, timestamp=ts, name="eyes"))["ok"]
    assert [call.status for call in slack_standin.calls("reactions.add")] == [429, 429, 200]


# --- files -------------------------------------------------------------------------------------------------


def test_files_upload_v2_shares_the_file_in_the_thread(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    parent = slack_standin.post_message(slack_standin.human, channel, "send me the log").ts
    answer = slack_client.files_upload_v2(
        channel=channel,
        thread_ts=parent,
        content="line 1\n",
        filename="run.log",
        initial_comment="here it is",
    )
    file = answer["file"]
    reply = slack_standin.thread(channel, parent)[1]
    assert reply.text == "here it is"
    assert reply.files[0]["id"] == file["id"]
    with urllib.request.urlopen(file["url_private"], timeout=5) as response:  # noqa: S310 (local URL)
        assert b"Sign in" in response.read()
    request = urllib.request.Request(  # noqa: S310 (a local stand-in URL)
        file["url_private"], headers={"Authorization": f"Bearer {slack_standin.bot_token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (local URL)
        assert response.read() == b"line 1\n"


# --- events over HTTP (Bolt) -------------------------------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/slack/events"


def _bolt(slack_standin: SlackStandIn) -> AsyncApp:
    client = AsyncWebClient(token=slack_standin.bot_token, base_url=slack_standin.api_url)
    return AsyncApp(client=client, signing_secret=slack_standin.signing_secret)


@pytest.fixture
async def bolt_http(slack_standin: SlackStandIn) -> AsyncIterator[tuple[AsyncApp, str]]:
    app = _bolt(slack_standin)
    runner, url = await _serve(app.web_app())
    yield app, url
    await runner.cleanup()


async def test_bolt_over_http_answers_a_signed_app_mention(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str]
) -> None:
    app, url = bolt_http

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Callable[..., Awaitable[Any]]) -> None:
        await say(text=f"On it, <@{event['user']}>!", thread_ts=event["ts"])

    channel = slack_standin.public_channel
    event = slack_standin.app_mention(slack_standin.human, channel, f"{slack_standin.mention} please fix CI")
    delivery = await slack_standin.send_event(url, event).wait_async()
    assert (delivery.delivered_count, delivery.ack_count) == (1, 1)
    assert delivery.last.status == 200
    parent = event["event"]["ts"]
    await slack_standin.wait_until_async(
        lambda: len(slack_standin.thread(channel, parent)) == 2, description="Bolt's reply"
    )
    assert slack_standin.render_thread(channel, parent).endswith("↳ peerbot: On it, @alice!")


async def test_bolt_refuses_forged_stale_and_unsigned_requests(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str]
) -> None:
    app, url = bolt_http
    seen: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any]) -> None:
        seen.append(event["ts"])

    event = slack_standin.app_mention(
        slack_standin.human, slack_standin.public_channel, f"{slack_standin.mention} hi"
    )
    for send in (
        slack_standin.send_forged_event,
        slack_standin.send_stale_event,
        slack_standin.send_unsigned_event,
    ):
        delivery = await send(url, event).wait_async()
        assert (delivery.delivered_count, delivery.last.status) == (1, 401), send.__name__
    assert seen == []


async def test_a_replay_is_byte_for_byte_the_same_request(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str]
) -> None:
    app, url = bolt_http
    seen: list[str] = []

    @app.event("app_mention")
    async def on_mention(body: dict[str, Any]) -> None:
        seen.append(body["event_id"])

    event = slack_standin.app_mention(
        slack_standin.human, slack_standin.public_channel, f"{slack_standin.mention} hi"
    )
    original = await slack_standin.send_event(url, event).wait_async()
    replayed = await slack_standin.replay(original).wait_async()
    first, again = original.attempts[0], replayed.attempts[0]
    assert first.request_body == again.request_body
    assert first.request_headers["X-Slack-Signature"] == again.request_headers["X-Slack-Signature"]
    assert replayed.last.status == 200  # within five minutes only the app's own dedup can catch it
    await slack_standin.wait_until_async(lambda: len(seen) == 2, description="both deliveries handled")
    assert seen[0] == seen[1] == event["event_id"]


async def test_bolt_answers_url_verification(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str]
) -> None:
    _, url = bolt_http
    delivery = await slack_standin.send_url_verification(url).wait_async()
    assert json.loads(delivery.last.body)["challenge"] == delivery.payload["challenge"]


async def test_a_button_click_reaches_bolt_and_respond_replaces_the_message(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str], slack_async_client: AsyncWebClient
) -> None:
    app, url = bolt_http

    @app.action("approve")
    async def on_approve(
        ack: Callable[[], Awaitable[None]], respond: Callable[..., Awaitable[Any]], body: dict[str, Any]
    ) -> None:
        await ack()
        await respond(text=f"Approved by <@{body['user']['id']}>", replace_original=True)

    channel = slack_standin.public_channel
    posted = await slack_async_client.chat_postMessage(
        channel=channel, text="Open a PR?", blocks=[_section("Open a PR?"), _button()]
    )
    payload = slack_standin.block_action(slack_standin.human, channel, posted["ts"], "approve")
    assert payload["actions"][0]["value"] == "v"
    delivery = await slack_standin.send_event(url, payload).wait_async()
    assert delivery.ack_count == 1
    assert delivery.envelope_type == "interactive"
    await slack_standin.wait_until_async(
        lambda: slack_standin.message(channel, posted["ts"]).text.startswith("Approved"),
        description="respond()",
    )
    assert slack_standin.message(channel, posted["ts"]).edit_count == 1
    with pytest.raises(Exception, match="no button with action_id 'reject'"):
        slack_standin.block_action(slack_standin.human, channel, posted["ts"], "reject")


async def test_a_slash_command_over_http_and_its_response_url(
    slack_standin: SlackStandIn, bolt_http: tuple[AsyncApp, str]
) -> None:
    app, url = bolt_http

    @app.command("/peerbot")
    async def on_command(
        ack: Callable[..., Awaitable[None]], respond: Callable[..., Awaitable[Any]], command: dict[str, Any]
    ) -> None:
        await ack(text="Checking…")
        await respond(text=f"Status for {command['text']}: idle")

    channel = slack_standin.public_channel
    command = slack_standin.slash_command(slack_standin.human, channel, "/peerbot", "me")
    delivery = await slack_standin.send_event(url, command).wait_async()
    assert delivery.envelope_type == "slash_commands"
    assert delivery.last.body == "Checking…".encode()
    await slack_standin.wait_until_async(
        lambda: len(slack_standin.ephemeral(channel)) == 2, description="the ack text and respond()"
    )
    shown = [message.text for message in slack_standin.ephemeral(channel, slack_standin.human)]
    assert sorted(shown) == ["Checking…", "Status for me: idle"]  # in either order, as in Slack
    assert slack_standin.messages(channel) == []


# --- HTTP retries ------------------------------------------------------------------------------------------


class _SlowApp:
    """An app endpoint that answers only from attempt ``answer_from`` on (earlier ones hang or fail)."""

    def __init__(self, *, answer_from: int, fail_with: int | None = None) -> None:
        self.answer_from = answer_from
        self.fail_with = fail_with
        self.requests: list[dict[str, str]] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if len(self.requests) - 1 < self.answer_from:
            if self.fail_with is not None:
                return web.Response(status=self.fail_with)
            # Hang past the deadline; released at teardown so the server can stop.
            await self.release.wait()
        return web.Response(text="")


@pytest.fixture
async def slow_app() -> AsyncIterator[Callable[..., Awaitable[tuple[_SlowApp, str]]]]:
    runners: list[tuple[web.AppRunner, _SlowApp]] = []

    async def make(**options: Any) -> tuple[_SlowApp, str]:
        endpoint = _SlowApp(**options)
        app = web.Application()
        app.router.add_post("/slack/events", endpoint.handle)
        runner, url = await _serve(app)
        runners.append((runner, endpoint))
        return endpoint, url

    yield make
    for runner, endpoint in runners:
        endpoint.release.set()
        await runner.cleanup()


async def test_an_event_not_acked_in_time_is_retried_with_slacks_headers(
    slack_standin_factory: Callable[..., SlackStandIn],
    slow_app: Callable[..., Awaitable[tuple[_SlowApp, str]]],
) -> None:
    slack = slack_standin_factory(ack_deadline=FAST_DEADLINE)
    endpoint, url = await slow_app(answer_from=1)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} hi")
    delivery = await slack.send_event(url, event).wait_async()
    assert (delivery.delivered_count, delivery.ack_count) == (2, 1)
    assert [a.outcome for a in delivery.attempts] == ["timeout", "acked"]
    first, retry = endpoint.requests
    assert "X-Slack-Retry-Num" not in first
    assert (retry["X-Slack-Retry-Num"], retry["X-Slack-Retry-Reason"]) == ("1", "http_timeout")
    timestamp, body = retry["X-Slack-Request-Timestamp"], delivery.attempts[1].request_body
    assert body is not None
    assert retry["X-Slack-Signature"] == sign(slack.signing_secret, timestamp, body)
    assert json.loads(body)["event_id"] == event["event_id"]


async def test_slack_gives_up_after_three_retries(
    slack_standin_factory: Callable[..., SlackStandIn],
    slow_app: Callable[..., Awaitable[tuple[_SlowApp, str]]],
) -> None:
    slack = slack_standin_factory(ack_deadline=0.2)
    endpoint, url = await slow_app(answer_from=99)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} hi")
    delivery = await slack.send_event(url, event).wait_async()
    assert (delivery.delivered_count, delivery.ack_count) == (4, 0)
    assert [h.get("X-Slack-Retry-Num") for h in endpoint.requests] == [None, "1", "2", "3"]


async def test_a_server_error_is_retried_as_http_error(
    slack_standin_factory: Callable[..., SlackStandIn],
    slow_app: Callable[..., Awaitable[tuple[_SlowApp, str]]],
) -> None:
    slack = slack_standin_factory(ack_deadline=FAST_DEADLINE)
    endpoint, url = await slow_app(answer_from=1, fail_with=500)
    event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} hi")
    delivery = await slack.send_event(url, event).wait_async()
    assert [a.outcome for a in delivery.attempts] == ["http_error", "acked"]
    assert endpoint.requests[1]["X-Slack-Retry-Reason"] == "http_error"


# --- Socket Mode -------------------------------------------------------------------------------------------


async def test_bolt_in_socket_mode_gets_a_mention_and_replies(slack_standin: SlackStandIn) -> None:
    app = _bolt(slack_standin)
    replied = asyncio.Event()

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Callable[..., Awaitable[Any]]) -> None:
        await say(text="Looking into it", thread_ts=event["ts"])
        replied.set()

    handler = AsyncSocketModeHandler(app, slack_standin.app_token)
    await handler.connect_async()  # type: ignore[no-untyped-call]
    try:
        await slack_standin.wait_for_socket_connection_async()
        channel = slack_standin.public_channel
        event = slack_standin.app_mention(slack_standin.human, channel, f"{slack_standin.mention} deploy")
        delivery = await slack_standin.send_socket_event(event).wait_async()
        assert (delivery.delivered_count, delivery.ack_count) == (1, 1)
        await asyncio.wait_for(replied.wait(), 5)
        assert slack_standin.render_thread(channel, event["event"]["ts"]).endswith(
            "↳ peerbot: Looking into it"
        )
        # Slack asks clients to reconnect from time to time; slack_sdk then opens a new connection.
        slack_standin.disconnect_socket_clients()
        await slack_standin.wait_until_async(
            lambda: (
                len(slack_standin.calls("apps.connections.open")) == 2
                and slack_standin.socket_connections == 1
            ),
            description="the reconnection",
        )
    finally:
        await handler.close_async()  # type: ignore[no-untyped-call]
    assert slack_standin.calls("apps.connections.open")[0].token_kind == "app"


async def test_socket_mode_envelopes_hello_and_retries(
    slack_standin_factory: Callable[..., SlackStandIn],
) -> None:
    slack = slack_standin_factory(ack_deadline=FAST_DEADLINE)
    opened = WebClient(token=slack.app_token, base_url=slack.api_url).apps_connections_open(
        app_token=slack.app_token
    )
    async with aiohttp.ClientSession() as session, session.ws_connect(opened["url"]) as socket:
        hello = await socket.receive_json(timeout=5)
        assert hello["type"] == "hello"
        assert hello["connection_info"]["app_id"] == slack.app_id
        event = slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} hi")
        delivery = slack.send_socket_event(event)
        first = await socket.receive_json(timeout=5)  # not acknowledged: Slack sends it again
        assert (first["type"], first["retry_attempt"], first["retry_reason"]) == ("events_api", 0, "")
        assert first["accepts_response_payload"] is False
        assert first["payload"]["event_id"] == event["event_id"]
        retry = await socket.receive_json(timeout=5)
        assert (retry["retry_attempt"], retry["retry_reason"]) == (1, "timeout")
        assert retry["envelope_id"] != first["envelope_id"]
        await socket.send_json({"envelope_id": first["envelope_id"]})  # too late: ignored
        await socket.send_json({"envelope_id": retry["envelope_id"]})
        await delivery.wait_async()
        assert (delivery.delivered_count, delivery.ack_count) == (2, 1)
        await slack.wait_until_async(lambda: delivery.attempts[0].late_acks == 1, description="the late ack")

        command = slack.slash_command(slack.human, slack.public_channel, "/peerbot", "status")
        slack.send_socket_event(command)
        envelope = await socket.receive_json(timeout=5)
        assert envelope["type"] == "slash_commands"
        assert envelope["accepts_response_payload"] is True
        assert "retry_attempt" not in envelope
        assert envelope["payload"]["command"] == "/peerbot"
        await socket.send_json({"envelope_id": envelope["envelope_id"], "payload": {"text": "ok"}})


async def test_socket_mode_needs_a_ticket_from_apps_connections_open(slack_standin: SlackStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
            await session.ws_connect(slack_standin.url.replace("http", "ws") + "link/?ticket=made-up")
    assert excinfo.value.status == 401
    with pytest.raises(Exception, match="no Socket Mode connection is open"):
        slack_standin.send_socket_event(
            slack_standin.app_mention(
                slack_standin.human, slack_standin.public_channel, slack_standin.mention
            )
        )


# --- event builders ----------------------------------------------------------------------------------------


def test_an_app_mention_is_both_in_the_thread_and_an_event(
    slack_client: WebClient, slack_standin: SlackStandIn
) -> None:
    channel = slack_standin.public_channel
    parent = slack_standin.post_message(slack_standin.human, channel, "context first").ts
    envelope = slack_standin.app_mention(
        slack_standin.human, channel, f"{slack_standin.mention} go", thread_ts=parent
    )
    assert envelope["type"] == "event_callback"
    assert envelope["event_id"].startswith("Ev")
    assert envelope["authorizations"][0]["user_id"] == slack_standin.bot_user_id
    assert envelope["api_app_id"] == slack_standin.app_id
    assert envelope["team_id"] == slack_standin.team_id
    event = envelope["event"]
    assert (event["type"], event["channel"], event["thread_ts"], event["user"]) == (
        "app_mention",
        channel,
        parent,
        slack_standin.human,
    )
    assert event["blocks"][0]["elements"][0]["elements"][0] == {
        "type": "user",
        "user_id": slack_standin.bot_user_id,
    }
    replies = slack_client.conversations_replies(channel=channel, ts=parent)["messages"]
    assert [m["ts"] for m in replies] == [parent, event["ts"]]
    with pytest.raises(Exception, match="must mention the bot"):
        slack_standin.app_mention(slack_standin.human, channel, "no mention here")


def test_message_event_builders(slack_standin: SlackStandIn) -> None:
    channel = slack_standin.im_channel
    posted = slack_standin.message_event(
        slack_standin.human, channel, "first", files=[("notes.txt", b"hello")]
    )
    event = posted["event"]
    assert (event["subtype"], event["channel_type"], event["files"][0]["name"]) == (
        "file_share",
        "im",
        "notes.txt",
    )
    changed = slack_standin.edit_message(slack_standin.human, channel, event["ts"], "second")["event"]
    assert changed["subtype"] == "message_changed"
    assert changed["previous_message"]["text"] == "first"
    assert changed["message"]["text"] == "second"
    assert changed["message"]["edited"]["user"] == slack_standin.human
    deleted = slack_standin.delete_message(channel, event["ts"])["event"]
    assert (deleted["subtype"], deleted["deleted_ts"]) == ("message_deleted", event["ts"])
    bot = slack_standin.bot_message(slack_standin.public_channel, "build passed", username="ci")["event"]
    assert (bot["subtype"], bot["username"], bot["channel_type"]) == ("bot_message", "ci", "channel")
    assert bot["bot_id"].startswith("B")
    assert "user" not in bot
    assert slack_standin.message(channel, event["ts"]).deleted
