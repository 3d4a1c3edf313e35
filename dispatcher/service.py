"""The dispatcher's work for each Slack payload: decide, record durably, acknowledge, then tell the thread.

Every listener follows the same three steps:

1. **Before the acknowledgement**, within ``RECORD_TIMEOUT_SECONDS`` (1.5 s by default; Slack waits 3):
   classify the payload (:mod:`peerbot.dispatcher.rules`), look up what the decision needs (the thread's
   Conversation, whether the channel is private), apply the rate limit, and write the request to the
   Conversation (:mod:`peerbot.dispatcher.store`). The result is a :class:`FollowUp`: what to tell Slack.
2. **Acknowledge.** Because the write happened first, a crash before this point is covered by Slack's
   retry, and a crash after it loses nothing. A write that failed or ran out of time is acknowledged
   too (a retry would fail the same way) and the person is told.
3. **After the acknowledgement**, as a tracked background task: the 👀 reaction, the status message with
   its Stop button (its ``ts`` recorded on the Conversation), and any reply. Only the writer that won the
   idempotent write does this, so a request is announced once however often it was delivered.

Duplicate deliveries are caught twice: in memory on this replica (event ids, message timestamps), and
across replicas by the idempotent writes of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from pydantic import ValidationError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from peerbot.audit import audit
from peerbot.conversation import ConversationSpec, Phase
from peerbot.dispatcher import replies
from peerbot.dispatcher.cache import (
    CHANNEL_INFO_TTL_SECONDS,
    DEDUP_MAX_ENTRIES,
    DEDUP_TTL_SECONDS,
    INFO_MAX_ENTRIES,
    THREAD_CONTEXT_TTL_SECONDS,
    USER_INFO_TTL_SECONDS,
    TTLCache,
)
from peerbot.dispatcher.metrics import Metrics
from peerbot.dispatcher.ratelimit import RateLimiter, Verdict
from peerbot.dispatcher.rules import (
    CHANNEL_TYPE_MPIM,
    CHANNEL_TYPE_PRIVATE,
    BadRepository,
    Candidate,
    Command,
    Ignore,
    Maintenance,
    Policy,
    Record,
    Refusal,
    Refuse,
    RunCommand,
    classify,
    decide,
)
from peerbot.dispatcher.store import (
    ConversationBackend,
    Recorded,
    RequestRecord,
    WriteOutcome,
    cancel_pending,
    explain,
    is_working,
)
from peerbot.naming import conversation_name, is_dns_label
from peerbot.planner import Reaction
from peerbot.resilience import Breakers, CircuitOpen, Dependency, post_with_fallback, slack_error_code
from peerbot.settings import DispatcherSettings
from peerbot.slack_messages import ACTION_CONTINUE, ACTION_STOP

#: Lazy: bound at the first log call, so it follows configure_logging() whenever that runs.
log = structlog.get_logger(__name__)

#: Slack answers these when a message's blocks break a rule; the message is re-sent as plain text.
BLOCK_ERRORS: Final = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long"}
)
#: Reactions already on a message are not an error for us.
HARMLESS_REACTION_ERRORS: Final = frozenset({"already_reacted"})
#: A Slack lookup made before the acknowledgement (conversations.info) gets at most this much of the
#: record budget, so a slow Slack can never eat the time the durable write needs.
LOOKUP_TIMEOUT_SECONDS: Final = 0.4
#: A person past the rate limit is told once per window; further messages in it only get a reaction.
RATE_LIMIT_NOTICE_SECONDS: Final = 60.0
#: How long stopping waits for follow-up work (status messages, reactions) to finish.
DRAIN_TIMEOUT_SECONDS: Final = 5.0
#: ``thread_ts`` of the message Peerbot reacts to when it has seen a request.
SEEN_REACTION: Final = Reaction.SEEN.value
STOP_REACTION: Final = Reaction.STOPPED.value
RATE_LIMITED_REACTION: Final = "hourglass_flowing_sand"

#: Bolt's ``ack``: called once, with a response body for commands and buttons.
Ack = Callable[..., Awaitable[Any]]


# --- what to do after the acknowledgement ---------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where to answer: a channel, the thread in it, the message that asked, and who asked."""

    channel: str
    thread_ts: str
    message_ts: str
    user: str


@dataclass(frozen=True)
class Say:
    """Post ``message`` in the thread (or only to the person who asked, when ``ephemeral``)."""

    message: dict[str, Any]
    ephemeral: bool = False
    reaction: str | None = None


@dataclass(frozen=True)
class React:
    name: str


@dataclass(frozen=True)
class Announce:
    """A request was recorded: react, post the status message, point the Conversation at it."""

    recorded: Recorded
    name: str
    requested_ts: str
    long_text_length: int = 0
    files: int = 0
    #: For Continue: the paused message whose button was pressed, and its blocks (the button is removed).
    paused_blocks: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Nothing:
    pass


FollowUp = Say | React | Announce | Nothing


@dataclass
class Handled:
    """The outcome label for metrics, and what to do once acknowledged."""

    outcome: str
    follow_up: FollowUp = field(default_factory=Nothing)


class Once:
    """``ack`` callable at most once, remembering whether it was."""

    def __init__(self, ack: Ack) -> None:
        self._ack = ack
        self.done = False

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        if not self.done:
            self.done = True
            await self._ack(*args, **kwargs)


class Background:
    """Work in flight: listeners before their acknowledgement, and tasks started after it.

    Tracked so that stopping (and tests) can wait until everything the dispatcher took on is done.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _update(self) -> None:
        if self._tasks or self._listeners:
            self._idle.clear()
        else:
            self._idle.set()

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Mark a listener as running (from receiving a payload to returning after its ack)."""
        self._listeners += 1
        self._update()
        try:
            yield
        finally:
            self._listeners -= 1
            self._update()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        self._update()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._update()
        if not task.cancelled() and task.exception() is not None:
            log.error("follow-up task failed", task=task.get_name(), error=task.exception())

    def __len__(self) -> int:
        return len(self._tasks) + self._listeners

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 (a bounded wait by design)
        """Wait until nothing is in flight; ``False`` if something still is after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = DRAIN_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109
        """Let work in flight finish for up to ``timeout`` seconds, then cancel the tasks left."""
        if not await self.wait_idle(timeout):
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """Everything the listeners share: settings, the store, Slack, caches, metrics and the rate limit."""

    def __init__(
        self,
        settings: DispatcherSettings,
        *,
        store: ConversationBackend,
        slack: AsyncWebClient,
        metrics: Metrics,
        limiter: RateLimiter,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slack = slack
        self.metrics = metrics
        self.limiter = limiter
        self.clock = clock
        self.background = Background()
        self.budget = settings.record_timeout_seconds
        self.seen_events: TTLCache[str, bool] = TTLCache(ttl=DEDUP_TTL_SECONDS, max_entries=DEDUP_MAX_ENTRIES)
        self.seen_messages: TTLCache[tuple[str, str], bool] = TTLCache(
            ttl=DEDUP_TTL_SECONDS, max_entries=DEDUP_MAX_ENTRIES
        )
        self.seen_requests: TTLCache[tuple[str, str, str], bool] = TTLCache(
            ttl=DEDUP_TTL_SECONDS, max_entries=DEDUP_MAX_ENTRIES
        )
        self.threads: TTLCache[str, dict[str, Any]] = TTLCache(
            ttl=THREAD_CONTEXT_TTL_SECONDS, max_entries=INFO_MAX_ENTRIES
        )
        self.users: TTLCache[str, dict[str, Any]] = TTLCache(
            ttl=USER_INFO_TTL_SECONDS, max_entries=INFO_MAX_ENTRIES
        )
        self.channels: TTLCache[str, bool] = TTLCache(
            ttl=CHANNEL_INFO_TTL_SECONDS, max_entries=INFO_MAX_ENTRIES
        )
        self.rate_notices: TTLCache[str, bool] = TTLCache(
            ttl=RATE_LIMIT_NOTICE_SECONDS, max_entries=INFO_MAX_ENTRIES
        )
        self.allowed_users = settings.id_set("allowed_users")
        self.allowed_channels = settings.id_set("allowed_channels")
        #: Circuit breakers by dependency: Slack's opens after repeated failures to post, so an outage is
        #: not hammered (the record is durable already; the thread is told when Slack is back).
        self.breakers = Breakers(listeners=[metrics.resilience.breaker_listener()])
        self.breakers[Dependency.SLACK]  # made now, so /ready shows it from the start
        metrics.resilience.watch(Dependency.SLACK)
        metrics.maintenance.set(1 if settings.peerbot_maintenance else 0)

    # --- shared pieces ------------------------------------------------------------------------------------

    def policy(self, context: Mapping[str, Any]) -> Policy:
        """The decision rules for this workspace (the bot's ids come from Bolt's authorization)."""
        return Policy(
            bot_user_id=str(context.get("bot_user_id") or ""),
            bot_id=context.get("bot_id"),
            trigger_phrase=self.settings.slack_trigger_phrase,
            allow_direct_messages=self.settings.allow_direct_messages,
            allow_private_channels=self.settings.allow_private_channels,
            follow_up_without_mention=self.settings.follow_up_without_mention,
            allowed_channels=self.allowed_channels,
            allowed_users=self.allowed_users,
            maintenance=self.settings.peerbot_maintenance,
        )

    def help(self) -> dict[str, Any]:
        return replies.help_reply(
            trigger_phrase=self.settings.slack_trigger_phrase,
            timeout_minutes=self.settings.session_timeout_minutes,
            organization=self.settings.github_organization,
        )

    async def thread_conversation(self, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The thread's Conversation (cached for five minutes unless ``fresh``); ``None`` when none."""
        if not fresh:
            cached = self.threads.get(name)
            if cached is not None:
                return cached
        found = await self.store.get(name)
        if found is not None:
            self.threads.set(name, found)
        else:
            self.threads.discard(name)
        return found

    async def channel_is_private(self, channel: str, channel_type: str | None) -> bool:
        """Whether a channel is private: from the event when it says, else conversations.info (cached).

        When Slack cannot tell us in time the channel is treated as public and the error counted: a
        refusal we cannot justify would be worse than answering in a channel the bot was invited to.
        """
        if channel_type is not None:
            return channel_type in (CHANNEL_TYPE_PRIVATE, CHANNEL_TYPE_MPIM)
        cached = self.channels.get(channel)
        if cached is not None:
            return cached
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                info = await self.slack.conversations_info(channel=channel)
        except (SlackApiError, TimeoutError, OSError) as error:
            self.metrics.error("slack_lookup")
            log.warning("could not tell whether a channel is private", channel=channel, error=str(error))
            return False
        data = info.get("channel") or {}
        private = bool(data.get("is_private") or data.get("is_mpim") or data.get("is_group"))
        self.channels.set(channel, private)
        return private

    async def user_info(self, user: str) -> dict[str, Any]:
        """users.info, cached for 24 hours; ``{}`` when Slack cannot say."""
        cached = self.users.get(user)
        if cached is not None:
            return cached
        try:
            answer = await self.slack.users_info(user=user)
        except SlackApiError as error:
            self.metrics.error("slack")
            log.warning("users.info failed", user=user, error=str(error))
            return {}
        info = dict(answer.get("user") or {})
        self.users.set(user, info)
        return info

    async def rate_limit(self, user: str) -> Verdict:
        try:
            return await self.limiter.hit(user)
        except Exception as error:  # the store (Redis) failing must not stop requests: fail open, count it
            self.metrics.error("rate_limit_store")
            log.warning("rate limit store failed; allowing the request", error=str(error))
            return Verdict(True, self.limiter.limit_for(user))

    def rate_limited(self, user: str, verdict: Verdict) -> Handled:
        self.metrics.rate_limit_hits.inc()
        if self.rate_notices.add(user, True):
            return Handled(
                "rate_limited", Say(replies.rate_limited(verdict.retry_after_seconds, verdict.limit))
            )
        return Handled("rate_limited", React(RATE_LIMITED_REACTION))

    # --- events: app_mention and message ------------------------------------------------------------------

    async def on_message_event(
        self, body: Mapping[str, Any], event: Mapping[str, Any], context: Mapping[str, Any], ack: Ack
    ) -> None:
        """An ``app_mention`` or ``message`` event (see the module docstring for the three steps)."""
        with self.background.listening():
            await self._message_event(body, event, context, ack)

    async def _message_event(
        self, body: Mapping[str, Any], event: Mapping[str, Any], context: Mapping[str, Any], ack: Ack
    ) -> None:
        once = Once(ack)
        event_type = str(event.get("type") or "unknown")
        where: Where | None = None
        try:
            classified = classify(event, team=body.get("team_id"), policy=self.policy(context))
            if isinstance(classified, Ignore):
                handled = Handled(f"ignored_{classified.reason}")
                log.debug("event ignored", reason=classified.reason, detail=classified.detail)
            else:
                message = classified.message
                where = Where(
                    channel=message.channel,
                    thread_ts=message.thread_ts,
                    message_ts=message.ts,
                    user=message.user,
                )
                if not self.seen_messages.add((message.channel, message.ts), True):
                    handled = Handled("duplicate")
                else:
                    handled = await self._before_ack(classified, context)
        except Exception as error:
            log.exception("listener failed", event_type=event_type)
            self.metrics.error("listener")
            handled = Handled(
                "error", Say(replies.record_failed(str(explain(error)))) if where else Nothing()
            )
        await once()
        self.metrics.event(event_type, handled.outcome)
        if where is not None and not isinstance(handled.follow_up, Nothing):
            self.background.spawn(
                self._after_ack(where, handled.follow_up), name=f"follow-up {where.message_ts}"
            )

    async def _before_ack(self, candidate: Candidate, context: Mapping[str, Any]) -> Handled:
        """Everything that must happen before the acknowledgement, within the record budget."""
        try:
            async with asyncio.timeout(self.budget):
                return await self._decide_and_record(candidate, context)
        except Exception as error:
            failure = explain(error)
            if failure.kind == "internal":
                log.exception("unexpected error while recording a request")
            self.metrics.error(failure.kind)
            self.metrics.conversations.labels(outcome="failed").inc()
            # Let a later delivery of the same message try again.
            self.seen_messages.discard((candidate.message.channel, candidate.message.ts))
            log.warning(
                "could not record a request",
                channel=candidate.message.channel,
                thread=candidate.message.thread_ts,
                kind=failure.kind,
                error=str(failure),
            )
            return Handled("record_failed", Say(replies.record_failed(str(failure))))

    async def _decide_and_record(self, candidate: Candidate, context: Mapping[str, Any]) -> Handled:
        policy = self.policy(context)
        message = candidate.message
        name = conversation_name(message.team, message.channel, message.thread_ts)
        known_user = self.users.get(message.user)
        if known_user is not None and known_user.get("is_bot"):
            return Handled("ignored_bot")
        # A thread's first message cannot have a Conversation yet (its name is the message's own ts).
        commands_need_it = candidate.command in (Command.STOP, Command.STATUS)
        conversation = None
        if message.in_thread or commands_need_it:
            conversation = await self.thread_conversation(name, fresh=commands_need_it)
        private = False
        if not message.is_direct and not policy.allow_private_channels:
            private = await self.channel_is_private(message.channel, message.channel_type)
        decision = decide(
            candidate,
            policy=policy,
            thread_has_conversation=conversation is not None,
            channel_is_private=private,
        )
        if isinstance(decision, Ignore):
            return Handled(f"ignored_{decision.reason}")
        if isinstance(decision, Refuse):
            log.info("request refused", why=decision.why.value, user=message.user, channel=message.channel)
            return Handled(
                f"refused_{decision.why.value}",
                Say(replies.refused(decision.why), ephemeral=not message.is_direct),
            )
        if isinstance(decision, RunCommand):
            return await self._command(decision.command, name, conversation, message.user)
        if isinstance(decision, Maintenance):
            return Handled("maintenance", Say(replies.maintenance()))
        if isinstance(decision, BadRepository):
            return Handled("bad_repository", Say(replies.bad_repository(decision.value)))
        assert isinstance(decision, Record)
        verdict = await self.rate_limit(message.user)
        if not verdict.allowed:
            return self.rate_limited(message.user, verdict)
        spec = ConversationSpec(
            team=message.team,
            channel=message.channel,
            threadTs=message.thread_ts,
            user=message.user,
            repository=candidate.repository,
            requestedTs=message.ts,
        )
        recorded = await self.store.record(RequestRecord(name, spec, message.files), known=conversation)
        return self._recorded(
            recorded,
            name,
            message.ts,
            outcome_if_won="recorded",
            long_text_length=len(message.text) if candidate.too_long else 0,
            files=len(message.files),
        )

    def _recorded(
        self, recorded: Recorded, name: str, requested_ts: str, *, outcome_if_won: str, **extra: Any
    ) -> Handled:
        self.metrics.conversations.labels(outcome=recorded.outcome.value).inc()
        self.threads.set(name, recorded.conversation)
        if not recorded.won:
            return Handled("duplicate")
        return Handled(outcome_if_won, Announce(recorded, name, requested_ts, **extra))

    async def _command(
        self, command: Command, name: str, conversation: dict[str, Any] | None, user: str
    ) -> Handled:
        label = f"command_{command.value}"
        if command is Command.HELP:
            return Handled(label, Say(self.help()))
        if conversation is None:
            return Handled(label, Say(replies.no_conversation()))
        if command is Command.STATUS:
            return Handled(label, Say(replies.status_reply(conversation, self.clock())))
        if not is_working(conversation):
            return Handled(label, Say(replies.nothing_to_stop()))
        if not cancel_pending(conversation):
            updated = await self.store.request_cancel(name, self.clock())
            self.threads.set(name, updated)
            self.metrics.conversations.labels(outcome="cancel_requested").inc()
            log.info("cancel requested", conversation=name, user=user)
        return Handled(label, React(STOP_REACTION))

    # --- after the acknowledgement ------------------------------------------------------------------------

    async def _after_ack(self, where: Where, follow_up: FollowUp) -> None:
        if isinstance(follow_up, Say):
            await self.post(where, follow_up.message, ephemeral=follow_up.ephemeral)
            if follow_up.reaction:
                await self.react(where.channel, where.message_ts, follow_up.reaction)
        elif isinstance(follow_up, React):
            await self.react(where.channel, where.message_ts, follow_up.name)
        elif isinstance(follow_up, Announce):
            await self.announce(where, follow_up)

    async def announce(self, where: Where, announce: Announce) -> None:
        """Tell the thread a request was recorded: the status message (with Stop), 👀, notes.

        The status message goes first and its ``ts`` onto the Conversation at once, so that a worker the
        operator starts moments later already finds the message it is to edit.
        """
        conversation = announce.recorded.conversation
        phase = (conversation.get("status") or {}).get("phase")
        behind = announce.recorded.outcome is WriteOutcome.UPDATED and phase == Phase.RUNNING
        status_ts: str | None = None
        if self.settings.enable_progress_updates:  # off: no status message (the worker posts none either)
            status_ts = await self.post(
                where,
                replies.queued_message(announce.name, behind_running_turn=behind, files=announce.files),
            )
            self._first_reply(announce.requested_ts, status_ts)
        if status_ts is not None:
            try:
                await self.store.set_status_message(announce.name, announce.requested_ts, status_ts)
            except Exception as error:
                failure = explain(error)
                self.metrics.error(failure.kind)
                log.warning(
                    "could not record the status message", conversation=announce.name, error=str(failure)
                )
        if await self.react(where.channel, where.message_ts, SEEN_REACTION) and status_ts is None:
            self._first_reply(announce.requested_ts, "reaction")
        if announce.long_text_length:
            await self.post(where, replies.too_long(announce.long_text_length))
        if announce.paused_blocks is not None:
            await self.close_paused_message(where, announce.paused_blocks)
        info = await self.user_info(where.user)
        spec = conversation.get("spec") or {}
        audit(
            "request",
            service="dispatcher",
            actor=where.user,
            action="continue" if announce.paused_blocks is not None else "request",
            outcome=announce.recorded.outcome.value,
            team=spec.get("team"),
            channel=where.channel,
            thread=where.thread_ts,
            conversation=announce.name,
            repository=spec.get("repository"),
            message=announce.requested_ts,
            user_name=info.get("name"),
            files=announce.files,
        )

    def _first_reply(self, requested_ts: str, posted: str | None) -> None:
        """Observe the time from the message that asked (its Slack timestamp) to our first reply."""
        if posted is None:
            return
        try:
            asked = float(requested_ts)
        except ValueError:
            return
        self.metrics.first_reply_seconds.observe(max(0.0, self.clock().timestamp() - asked))

    async def post(self, where: Where, message: dict[str, Any], *, ephemeral: bool = False) -> str | None:
        """Post in the thread (or to the asker only); re-sent as plain text if Slack rejects the blocks.

        Returns the message's ``ts`` (``None`` for ephemeral messages and failures, which are logged).
        """
        payload: dict[str, Any] = {
            "channel": where.channel,
            "thread_ts": where.thread_ts,
            "text": message["text"],
        }
        if message.get("blocks") is not None:
            payload["blocks"] = message["blocks"]
        if ephemeral:
            payload["user"] = where.user
        else:
            payload |= {"unfurl_links": False, "unfurl_media": False}
        try:
            answer = await post_with_fallback(
                self.slack,
                "chat.postEphemeral" if ephemeral else "chat.postMessage",
                payload,
                on_fallback=self.metrics.resilience.fallback,
                breaker=self.breakers[Dependency.SLACK],
                channel=where.channel,
                thread=where.thread_ts,
            )
        except CircuitOpen as error:
            self.metrics.error("slack_circuit_open")
            log.warning(
                "not posting in the thread: Slack keeps failing", channel=where.channel, error=str(error)
            )
            return None
        except SlackApiError as error:
            self.metrics.error("slack")
            log.warning("could not post in the thread", channel=where.channel, error=slack_error_code(error))
            return None
        except (OSError, TimeoutError) as error:
            self.metrics.error("slack_unreachable")
            log.warning("could not reach Slack to post", channel=where.channel, error=type(error).__name__)
            return None
        if ephemeral:
            return None
        ts = answer.get("ts")
        return ts if isinstance(ts, str) else None

    async def react(self, channel: str, ts: str, name: str) -> bool:
        """Add a reaction (unless ``ENABLE_STATUS_REACTIONS`` is off); ``True`` when it is there."""
        if not self.settings.enable_status_reactions:
            return False
        try:
            await self.slack.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as error:
            if error.response.get("error") not in HARMLESS_REACTION_ERRORS:
                self.metrics.error("slack")
                log.warning("could not add a reaction", channel=channel, error=error.response.get("error"))
                return False
        except (OSError, TimeoutError) as error:
            self.metrics.error("slack_unreachable")
            log.warning("could not reach Slack to react", channel=channel, error=type(error).__name__)
            return False
        return True

    async def close_paused_message(self, where: Where, blocks: list[dict[str, Any]]) -> None:
        """Replace the Continue button of a paused message with who pressed it (no second press)."""
        kept = [block for block in blocks if block.get("type") != "actions"]
        note = replies.continuing(where.user)
        kept.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note["text"]}]})
        try:
            await self.slack.chat_update(
                channel=where.channel, ts=where.message_ts, text=note["text"], blocks=kept
            )
        except SlackApiError as error:
            self.metrics.error("slack")
            log.warning("could not update the paused message", error=error.response.get("error"))

    # --- buttons ------------------------------------------------------------------------------------------

    async def on_button(self, body: Mapping[str, Any], context: Mapping[str, Any], ack: Ack) -> None:
        """The Stop and Continue buttons: their value is the Conversation's name."""
        with self.background.listening():
            await self._button(body, context, ack)

    async def _button(self, body: Mapping[str, Any], context: Mapping[str, Any], ack: Ack) -> None:
        once = Once(ack)
        actions = body.get("actions") or [{}]
        action = actions[0] if isinstance(actions, list) and actions else {}
        action_id = str(action.get("action_id") or "unknown")
        where = _button_where(body)
        handled: Handled
        try:
            if where is None:
                handled = Handled("ignored_malformed")
            else:
                handled = await self._button_before_ack(action_id, action, body, where, context)
        except Exception as error:
            failure = explain(error)
            self.metrics.error(failure.kind)
            if failure.kind == "internal":
                log.exception("unexpected error while handling a button", action=action_id)
            else:
                log.warning("a button could not be handled", action=action_id, error=str(failure))
            handled = Handled("record_failed", Say(replies.action_failed(str(failure)), ephemeral=True))
        await once()
        self.metrics.event("block_actions", handled.outcome)
        if where is not None and not isinstance(handled.follow_up, Nothing):
            self.background.spawn(
                self._after_ack(where, handled.follow_up), name=f"button {where.message_ts}"
            )

    async def _button_before_ack(
        self,
        action_id: str,
        action: Mapping[str, Any],
        body: Mapping[str, Any],
        where: Where,
        context: Mapping[str, Any],
    ) -> Handled:
        team = str((body.get("team") or {}).get("id") or context.get("team_id") or "")
        value = action.get("value")
        name = value if isinstance(value, str) and is_dns_label(value) else None
        name = name or conversation_name(team, where.channel, where.thread_ts)
        policy = self.policy(context)
        if policy.allowed_users and where.user not in policy.allowed_users:
            return Handled(
                f"refused_{Refusal.USER_NOT_ALLOWED.value}",
                Say(replies.refused(Refusal.USER_NOT_ALLOWED), ephemeral=True),
            )
        async with asyncio.timeout(self.budget):
            conversation = await self.thread_conversation(name, fresh=True)
            if conversation is None:
                return Handled("no_conversation", Say(replies.no_conversation(), ephemeral=True))
            if action_id == ACTION_STOP:
                return await self._stop_button(name, conversation, where.user)
            if action_id == ACTION_CONTINUE:
                return await self._continue_button(name, conversation, where, body, policy)
        return Handled("ignored_unknown_action")

    async def _stop_button(self, name: str, conversation: dict[str, Any], user: str) -> Handled:
        if not is_working(conversation):
            return Handled("command_stop", Say(replies.nothing_to_stop(), ephemeral=True))
        if not cancel_pending(conversation):
            updated = await self.store.request_cancel(name, self.clock())
            self.threads.set(name, updated)
            self.metrics.conversations.labels(outcome="cancel_requested").inc()
            log.info("cancel requested", conversation=name, user=user, via="button")
        return Handled("command_stop", Say(replies.stopping(user), ephemeral=True))

    async def _continue_button(
        self,
        name: str,
        conversation: dict[str, Any],
        where: Where,
        body: Mapping[str, Any],
        policy: Policy,
    ) -> Handled:
        """Continue after a pause: a follow-up whose "newest message" is the paused message itself.

        The paused message is newer than anything answered, so the operator starts a turn; pressing
        Continue twice (or on two replicas) records the same timestamp, which the store sees as unchanged.
        """
        if policy.maintenance:
            return Handled("maintenance", Say(replies.maintenance(), ephemeral=True))
        verdict = await self.rate_limit(where.user)
        if not verdict.allowed:
            return self.rate_limited(where.user, verdict)
        try:
            spec = ConversationSpec.model_validate(conversation.get("spec") or {})
        except ValidationError:
            return Handled(
                "ignored_malformed",
                Say(replies.action_failed("the thread's record is damaged"), ephemeral=True),
            )
        spec = spec.model_copy(update={"requested_ts": where.message_ts, "status_message_ts": None})
        recorded = await self.store.record(RequestRecord(name, spec), known=conversation)
        if not recorded.won:
            self.metrics.conversations.labels(outcome=recorded.outcome.value).inc()
            phase = (recorded.conversation.get("status") or {}).get("phase")
            return Handled("duplicate", Say(replies.cannot_continue(phase), ephemeral=True))
        message = body.get("message") or {}
        raw_blocks = message.get("blocks")
        blocks = (
            [block for block in raw_blocks if isinstance(block, dict)] if isinstance(raw_blocks, list) else []
        )
        return self._recorded(
            recorded, name, where.message_ts, outcome_if_won="recorded", paused_blocks=list(blocks)
        )

    # --- slash command ------------------------------------------------------------------------------------

    async def on_slash_command(self, command: Mapping[str, Any], ack: Ack) -> None:
        """``/peerbot``: how to use Peerbot (work itself is asked for in a thread)."""
        message = self.help()
        await ack(text=message["text"], blocks=message["blocks"], response_type="ephemeral")
        self.metrics.event("slash_command", "command_help")

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def drain(self, timeout: float = DRAIN_TIMEOUT_SECONDS) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until the payloads taken on are acknowledged and their follow-ups done."""
        return await self.background.wait_idle(timeout)

    async def close(self) -> None:
        await self.background.close()


def _button_where(body: Mapping[str, Any]) -> Where | None:
    """Where a button was pressed: the message (its thread) and who pressed it."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    user = (body.get("user") or {}).get("id")
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    message_ts = container.get("message_ts") or message.get("ts")
    thread_ts = container.get("thread_ts") or message.get("thread_ts") or message_ts
    if not (
        isinstance(user, str)
        and isinstance(channel, str)
        and isinstance(message_ts, str)
        and isinstance(thread_ts, str)
        and user
        and channel
        and message_ts
    ):
        return None
    return Where(channel=channel, thread_ts=thread_ts, message_ts=message_ts, user=user)
