"""The reconcile planner: from a Conversation, its Jobs, the time and the settings, the actions to take.

This is the heart of the operator and of the single-machine runner, and it is pure: no I/O, no clock, no
randomness. Both callers read the world into the plain views below, call :func:`plan`, and apply the
actions it returns in order. Because it is level-triggered, calling it again on the same world returns
the same actions, and once they are applied it returns nothing: that is what makes a restarted operator
safe at any moment (Job names are deterministic, so a second "start" of the same turn is a no-op).

The rules, in order:

1. A Conversation being deleted needs nothing (its Jobs go with it through their ownerReference).
2. A spec the worker cannot act on (missing Slack ids, a malformed repository) ends as ``Failed`` once.
3. A cancel request not yet carried out deletes the running Job and ends as ``Cancelled``.
4. The newest Job's outcome, not yet recorded, is recorded: answered (``Waiting``), paused (``Waiting``),
   failed, timed out; a pod lost to eviction or node loss is retried once as a second attempt.
5. A Job that can never start (image pull failure, a missing Secret) is deleted and ends as ``Failed``.
6. A Job the status does not know about (the operator stopped between creating it and recording it) is
   adopted; a Job the status records as running that no longer exists ends the turn as ``Failed``. (The
   caller makes sure "no longer exists" is true, not a cache that has not seen the Job yet.)
7. A message newer than anything answered or attempted starts the next turn, unless the cluster-wide
   limit on concurrent Jobs is reached, in which case the Conversation waits as ``Queued``. In maintenance
   (``PEERBOT_MAINTENANCE``) no new turn starts: the Conversation waits as ``Queued`` with the condition
   ``Maintenance``, the thread is told once, and the turn starts when maintenance ends.
8. An idle Conversation past the retention is deleted (its session stays in the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from peerbot.conversation import Conversation, ConversationSpec, Phase, Tokens
from peerbot.naming import job_name
from peerbot.result import Outcome, TurnResult

#: Container waiting reasons after which a pod will never start without someone fixing something.
NEVER_STARTS = {
    "ErrImagePull": "could not pull the worker image",
    "ImagePullBackOff": "could not pull the worker image",
    "InvalidImageName": "the worker image name is not valid",
    "CreateContainerConfigError": "the worker's configuration is incomplete (often a missing Secret or key)",
    "CreateContainerError": "the worker container could not be created",
}
#: Pod-level reasons that mean the pod was taken away, not that the turn failed: retried once.
LOST_POD_REASONS = {"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown", "Preempting"}
#: Jobs are retried once after an eviction or node loss (the issue's "one automatic retry").
MAX_ATTEMPTS = 2

#: Kubernetes reports a Job finished and its pod terminated in separate watch streams; a finished Job
#: whose pod still looks alive is given this long for the pod's own update to arrive before the outcome is
#: recorded without it (a pod deleted at the deadline never sends one).
POD_SETTLE_GRACE = timedelta(seconds=30)

#: How long a new turn waits for the dispatcher to record the request's status message (it is posted
#: within a second of the request; Slack timestamps are the message's time).
STATUS_MESSAGE_GRACE = timedelta(seconds=3)

IDLE_PHASES = {Phase.WAITING, Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.CANCELLED}


def ts_value(ts: str | None) -> Decimal:
    """A Slack timestamp as a number, for ordering; ``None`` or garbage sorts first."""
    if not ts:
        return Decimal(-1)
    try:
        return Decimal(ts)
    except InvalidOperation:
        return Decimal(-1)


# --- The world, as plain data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    """What the planner needs to know of one worker pod."""

    name: str
    phase: str | None = None  # Pending, Running, Succeeded, Failed
    reason: str | None = None  # pod.status.reason, e.g. Evicted
    waiting_reason: str | None = None  # the worker container's waiting reason, e.g. ErrImagePull
    waiting_message: str | None = None
    terminated_reason: str | None = None  # OOMKilled, Error, Completed, DeadlineExceeded
    exit_code: int | None = None
    termination_message: str | None = None
    disrupted: bool = False  # condition DisruptionTarget=True (eviction, preemption, node loss)
    deleting: bool = False


@dataclass(frozen=True)
class JobView:
    """What the planner needs to know of one worker Job."""

    name: str
    turn: int
    attempt: int = 1
    requested_ts: str | None = None
    created_at: datetime | None = None
    active: int = 0
    complete: bool = False
    finished_at: datetime | None = None
    failed_reason: str | None = None  # the Failed condition's reason, e.g. DeadlineExceeded
    deleting: bool = False
    pods: tuple[PodView, ...] = ()

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None

    @property
    def running(self) -> bool:
        return not self.finished and not self.deleting

    @property
    def pods_settled(self) -> bool:
        """No pod of the Job still looks alive (its final state has been seen)."""
        return all(pod.deleting or pod.phase not in ("Pending", "Running") for pod in self.pods)

    def result(self) -> TurnResult | None:
        """The worker's own report, from the newest pod that left one."""
        for pod in reversed(self.pods):
            parsed = TurnResult.parse(pod.termination_message)
            if parsed is not None:
                return parsed
        return None


@dataclass(frozen=True)
class ClusterView:
    """What the planner needs to know beyond one Conversation: capacity and the queue for it."""

    running_jobs: int = 0
    #: Conversations waiting for capacity, oldest request first.
    queue: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannerSettings:
    """The settings the planner depends on."""

    session_timeout_minutes: int = 5
    max_concurrent_jobs: int = 0  # 0: no limit
    retention: timedelta = timedelta(days=30)
    #: The maintenance switch: no new turn starts (turns already running finish).
    maintenance: bool = False


# --- Actions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnRequest:
    """Everything a worker needs to run one turn; all pointers, no message text."""

    conversation: str
    turn: int
    attempt: int
    job_name: str
    spec: ConversationSpec
    answered_ts: str | None


@dataclass(frozen=True)
class StartTurn:
    """Start a worker for this turn (a Job, or a claimed warm pod)."""

    request: TurnRequest


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str


@dataclass(frozen=True)
class PatchStatus:
    """Merge ``patch`` (camelCase, as the API wants it) into the Conversation's status."""

    patch: dict[str, Any]


class Reaction(StrEnum):
    """Reactions on the triggering message (Slack emoji names)."""

    SEEN = "eyes"
    WORKING = "gear"
    DONE = "white_check_mark"
    FAILED = "x"
    PAUSED = "hourglass_flowing_sand"
    STOPPED = "octagonal_sign"


@dataclass(frozen=True)
class Notify:
    """Tell the person in the thread: a message (what happened, what to do) and a reaction."""

    text: str
    reaction: Reaction | None = None
    #: The message the reaction goes on: the newest request of the turn.
    message_ts: str | None = None


@dataclass(frozen=True)
class RecordEvent:
    """A Kubernetes Event on the Conversation (``kubectl describe conversation``)."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class DeleteConversation:
    reason: str


Action = StartTurn | DeleteJob | PatchStatus | Notify | RecordEvent | DeleteConversation


@dataclass
class Plan:
    """The actions, in the order to apply them, and when to look again if the planner is waiting."""

    actions: list[Action] = field(default_factory=list)
    #: Set when nothing is done *yet* for a reason that expires by itself (a grace period): the caller
    #: should plan this Conversation again after this long even if nothing else happens.
    recheck_after: timedelta | None = None

    def __bool__(self) -> bool:
        return bool(self.actions)


# --- The planner ------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def spec_problems(raw_spec: dict[str, Any] | None) -> str | None:
    """Why a raw spec cannot be acted on, in words for a person; ``None`` when it is fine."""
    if not raw_spec:
        return "the Conversation has no spec: it needs team, channel, threadTs, user and requestedTs"
    from pydantic import ValidationError

    try:
        ConversationSpec.model_validate(raw_spec)
    except ValidationError as error:
        parts = []
        for problem in error.errors(include_input=False):
            where = ".".join(str(p) for p in problem["loc"]) or "spec"
            if problem["type"] == "missing":
                parts.append(f"spec.{where} is missing")
            elif where == "repository":
                parts.append("spec.repository must be owner/name, as on GitHub")
            else:
                parts.append(f"spec.{where} is not valid ({problem['msg']})")
        return "; ".join(parts)
    if ts_value(raw_spec.get("requestedTs")) < ts_value(raw_spec.get("threadTs")):
        return "spec.requestedTs is older than spec.threadTs: the message to answer must be in the thread"
    return None


def plan_invalid_spec(problem: str, raw_status: dict[str, Any] | None, now: datetime) -> Plan:
    """A spec that cannot be acted on ends as ``Failed`` with the problem, once (never a retry loop)."""
    raw_status = raw_status or {}
    if raw_status.get("phase") == Phase.FAILED.value and raw_status.get("error") == problem:
        return Plan()
    return Plan(
        [
            PatchStatus(
                {
                    "phase": Phase.FAILED.value,
                    "error": problem,
                    "finishedAt": _iso(now),
                    "updatedAt": _iso(now),
                }
            ),
            RecordEvent("Warning", "InvalidSpec", problem),
        ]
    )


def plan(
    conversation: Conversation,
    jobs: list[JobView],
    now: datetime,
    settings: PlannerSettings,
    cluster: ClusterView | None = None,
    *,
    deleting: bool = False,
) -> Plan:
    """Decide what to do for one Conversation. Pure: the same inputs always give the same plan."""
    cluster = cluster or ClusterView()
    if deleting:
        return Plan()
    status = conversation.status
    spec = conversation.spec
    jobs = sorted(jobs, key=lambda j: (j.turn, j.attempt))
    latest = jobs[-1] if jobs else None
    running = [j for j in jobs if j.running]

    # 3. Cancel.
    if spec.cancel_requested_at is not None and (
        status.cancelled_at is None or status.cancelled_at < spec.cancel_requested_at
    ):
        return Plan(_cancel(conversation, running, now))

    if latest is not None:
        known = status.job == latest.name
        recorded = known and status.phase not in (Phase.RUNNING, Phase.PENDING, Phase.QUEUED)
        # 4. Record the newest Job's outcome (once its pod's final state, with the worker's report, is seen).
        if latest.finished and not recorded:
            waited = now - latest.finished_at if latest.finished_at else POD_SETTLE_GRACE
            if not latest.pods_settled and waited < POD_SETTLE_GRACE:
                return Plan(recheck_after=POD_SETTLE_GRACE - waited)
            return Plan(_record_outcome(conversation, latest, now, settings))
        # 5. A Job that can never start.
        if latest.running:
            stuck = _never_starts(latest)
            if stuck is not None:
                return Plan(_fail_stuck_job(conversation, latest, stuck, now))
        # 6. Adopt a Job the status does not know about.
        if latest.running and not known:
            return Plan(
                [
                    PatchStatus(_running_patch(latest, now, max(status.turns, latest.turn))),
                    RecordEvent("Normal", "Adopted", f"Recorded Job {latest.name}, created before a restart"),
                ]
            )
        if running:
            # A Job whose outcome the status already records can still look running in a cache that is a
            # moment behind: the status is the fact, so it never goes back to Running.
            if known and status.phase in (Phase.PENDING, Phase.QUEUED):
                return Plan([PatchStatus({"phase": Phase.RUNNING.value, "job": latest.name})])
            return Plan()

    # 6b. The Job the status records as running is gone (deleted by hand, or lost with its namespace).
    if status.phase == Phase.RUNNING and status.job and all(job.name != status.job for job in jobs):
        return Plan(_job_vanished(conversation, status.job, now))

    # 7. A new request starts the next turn.
    newest_handled = max(ts_value(status.answered_ts), ts_value(status.attempted_ts))
    if latest is not None:
        newest_handled = max(newest_handled, ts_value(latest.requested_ts))
    if ts_value(spec.requested_ts) > newest_handled:
        if settings.maintenance:
            return Plan(_hold_for_maintenance(conversation, now))
        waiting = _awaiting_status_message(spec, now)
        if waiting is not None:
            # The dispatcher posts the request's status message right after recording it; a worker
            # started before that would edit the previous turn's message. The status message's own
            # patch re-plans this at once; after the grace the turn starts anyway (the worker posts one).
            return Plan(recheck_after=waiting)
        return Plan(_start_or_queue(conversation, latest, now, settings, cluster))

    # 8. Retention.
    last_activity = status.finished_at or status.updated_at or status.created_at
    if (
        status.phase in IDLE_PHASES
        and last_activity is not None
        and now - last_activity > settings.retention
        and not running
    ):
        days = settings.retention.days or settings.retention.total_seconds() / 86400
        return Plan([DeleteConversation(f"idle for more than {days:g} days; the session stays in the store")])
    return Plan()


def _awaiting_status_message(spec: ConversationSpec, now: datetime) -> timedelta | None:
    """How much longer to wait for the newest request's status message; ``None``: do not wait."""
    if ts_value(spec.status_message_ts) >= ts_value(spec.requested_ts):
        return None
    requested_at = datetime.fromtimestamp(float(ts_value(spec.requested_ts)), tz=UTC)
    remaining = STATUS_MESSAGE_GRACE - (now - requested_at)
    return remaining if remaining > timedelta(0) else None


def _running_patch(job: JobView, now: datetime, turns: int) -> dict[str, Any]:
    return {
        "phase": Phase.RUNNING.value,
        "job": job.name,
        "turns": turns,
        "attemptedTs": job.requested_ts,
        "startedAt": _iso(job.created_at or now),
        "queuePosition": None,
        "error": None,
        "updatedAt": _iso(now),
    }


#: The condition a Conversation held back by maintenance carries (``kubectl describe`` shows it).
MAINTENANCE_CONDITION = "Maintenance"
MAINTENANCE_TEXT = (
    "🔧 Peerbot is down for maintenance, so I have not started on this yet. Your message is kept: I will "
    "start on it by myself as soon as maintenance ends, with no need to ask again. Say `stop` to drop it."
)


def _held(conversation: Conversation) -> bool:
    return any(c.type == MAINTENANCE_CONDITION and c.status == "True" for c in conversation.status.conditions)


def _hold_for_maintenance(conversation: Conversation, now: datetime) -> list[Action]:
    """Maintenance: no new turn; the thread is told once (the condition records that it was)."""
    if _held(conversation):
        return []
    others = [
        c.model_dump(mode="json", by_alias=True, exclude_none=True)
        for c in conversation.status.conditions
        if c.type != MAINTENANCE_CONDITION
    ]
    held = {
        "type": MAINTENANCE_CONDITION,
        "status": "True",
        "reason": "MaintenanceMode",
        "message": "PEERBOT_MAINTENANCE is on: the turn starts when it is switched off",
        "lastTransitionTime": _iso(now),
    }
    return [
        PatchStatus(
            {
                "phase": Phase.QUEUED.value,
                "queuePosition": None,
                "conditions": [*others, held],
                "updatedAt": _iso(now),
            }
        ),
        Notify(MAINTENANCE_TEXT, None, conversation.spec.requested_ts),
        RecordEvent("Normal", "HeldForMaintenance", "Maintenance is on: the next turn waits until it ends"),
    ]


def _start_or_queue(
    conversation: Conversation,
    latest: JobView | None,
    now: datetime,
    settings: PlannerSettings,
    cluster: ClusterView,
) -> list[Action]:
    status = conversation.status
    spec = conversation.spec
    if settings.max_concurrent_jobs and cluster.running_jobs >= settings.max_concurrent_jobs:
        try:
            position = cluster.queue.index(conversation.name) + 1
        except ValueError:
            position = len(cluster.queue) + 1
        if status.phase == Phase.QUEUED and status.queue_position == position:
            return []
        return [PatchStatus({"phase": Phase.QUEUED.value, "queuePosition": position, "updatedAt": _iso(now)})]
    turn = max(status.turns, latest.turn if latest else 0) + 1
    name = job_name(conversation.name, turn)
    request = TurnRequest(
        conversation=conversation.name,
        turn=turn,
        attempt=1,
        job_name=name,
        spec=spec,
        answered_ts=status.answered_ts,
    )
    patch = {
        "phase": Phase.RUNNING.value,
        "job": name,
        "turns": turn,
        "attemptedTs": spec.requested_ts,
        "startedAt": _iso(now),
        "finishedAt": None,
        "queuePosition": None,
        "error": None,
        "updatedAt": _iso(now),
    }
    if status.created_at is None:
        patch["createdAt"] = _iso(now)
    if _held(conversation):  # maintenance has ended: the condition goes
        patch["conditions"] = [
            c.model_dump(mode="json", by_alias=True, exclude_none=True)
            for c in status.conditions
            if c.type != MAINTENANCE_CONDITION
        ]
    return [
        StartTurn(request),
        PatchStatus(patch),
        RecordEvent("Normal", "TurnStarted", f"Started turn {turn} as Job {name}"),
    ]


def _cancel(conversation: Conversation, running: list[JobView], now: datetime) -> list[Action]:
    spec = conversation.spec
    status = conversation.status
    actions: list[Action] = [DeleteJob(job.name, "cancelled in Slack") for job in running]
    was_working = bool(running) or status.phase in (Phase.RUNNING, Phase.QUEUED, Phase.PENDING)
    actions.append(
        PatchStatus(
            {
                "phase": Phase.CANCELLED.value,
                "cancelledAt": _iso(spec.cancel_requested_at or now),
                "answeredTs": _newest(status.answered_ts, spec.requested_ts),
                "attemptedTs": _newest(status.attempted_ts, spec.requested_ts),
                "queuePosition": None,
                "finishedAt": _iso(now),
                "updatedAt": _iso(now),
            }
        )
    )
    if was_working:
        actions.append(
            Notify(
                "Stopped. Work up to the last completed step is saved on the branch; "
                "reply in this thread to continue.",
                Reaction.STOPPED,
                spec.requested_ts,
            )
        )
    actions.append(RecordEvent("Normal", "Cancelled", "Cancelled at the request of the thread"))
    return actions


def _newest(a: str | None, b: str | None) -> str | None:
    return a if ts_value(a) >= ts_value(b) else b


def _never_starts(job: JobView) -> str | None:
    for pod in job.pods:
        if pod.waiting_reason in NEVER_STARTS:
            detail = f": {pod.waiting_message}" if pod.waiting_message else ""
            return f"{NEVER_STARTS[pod.waiting_reason]} ({pod.waiting_reason}{detail})"
    return None


def _fail_stuck_job(conversation: Conversation, job: JobView, why: str, now: datetime) -> list[Action]:
    text = (
        f"I could not start a worker for this thread: {why}. "
        "This needs a Peerbot administrator (see docs/operations.md, 'Worker never starts'); "
        "your message is kept, and replying here after the fix starts it again."
    )
    return [
        DeleteJob(job.name, why),
        PatchStatus(
            {
                "phase": Phase.FAILED.value,
                "job": job.name,
                "error": f"worker never started: {why}",
                "finishedAt": _iso(now),
                "updatedAt": _iso(now),
            }
        ),
        Notify(text, Reaction.FAILED, job.requested_ts or conversation.spec.requested_ts),
        RecordEvent("Warning", "WorkerNeverStarted", why),
    ]


def _job_vanished(conversation: Conversation, name: str, now: datetime) -> list[Action]:
    error = f"the worker Job {name} was deleted before it reported an outcome"
    text = (
        "My worker for this thread was removed before it finished. Work up to its last completed step is "
        "saved; reply here to continue."
    )
    return [
        PatchStatus(
            {"phase": Phase.FAILED.value, "error": error, "finishedAt": _iso(now), "updatedAt": _iso(now)}
        ),
        Notify(text, Reaction.FAILED, conversation.spec.requested_ts),
        RecordEvent("Warning", "JobVanished", error),
    ]


def _lost_pod(job: JobView) -> bool:
    """The pod was taken away (eviction, preemption, node loss, deletion), not failed by the turn."""
    if not job.pods:
        return job.failed_reason not in ("DeadlineExceeded",)
    pod = job.pods[-1]
    if pod.reason in LOST_POD_REASONS or pod.disrupted:
        return True
    return pod.terminated_reason is None and pod.exit_code is None and pod.termination_message is None


def _record_outcome(
    conversation: Conversation, job: JobView, now: datetime, settings: PlannerSettings
) -> list[Action]:
    status = conversation.status
    result = job.result()
    base: dict[str, Any] = {
        "job": job.name,
        "turns": max(status.turns, job.turn),
        "finishedAt": _iso(now),
        "updatedAt": _iso(now),
        "queuePosition": None,
    }
    if result is not None:
        tokens = Tokens(
            input=status.tokens.input + result.tokens.input,
            output=status.tokens.output + result.tokens.output,
            cacheRead=status.tokens.cache_read + result.tokens.cache_read,
            cacheWrite=status.tokens.cache_write + result.tokens.cache_write,
        )
        base["tokens"] = tokens.to_api()
        base["costUSD"] = round(status.cost_usd + result.cost_usd, 6)
        if result.pull_request:
            base["pullRequest"] = result.pull_request
        if result.answered_ts:
            base["answeredTs"] = _newest(status.answered_ts, result.answered_ts)

    if result is not None and result.outcome in (Outcome.DONE, Outcome.PAUSED):
        paused = result.outcome == Outcome.PAUSED
        return [
            PatchStatus(base | {"phase": Phase.WAITING.value, "error": None}),
            RecordEvent(
                "Normal",
                "TurnPaused" if paused else "TurnAnswered",
                f"Turn {job.turn} {'paused at the time limit' if paused else 'answered'}",
            ),
        ]
    if result is not None and result.outcome == Outcome.FAILED:
        # The worker has already told the person what happened and what to do.
        message = result.error.message if result.error else "the worker reported a failure"
        return [
            PatchStatus(base | {"phase": Phase.FAILED.value, "error": message}),
            RecordEvent("Warning", "TurnFailed", message),
        ]

    # No report from the worker: say what Kubernetes saw, in words a person understands.
    pod = job.pods[-1] if job.pods else None
    if job.failed_reason == "DeadlineExceeded" or (pod and pod.reason == "DeadlineExceeded"):
        minutes = settings.session_timeout_minutes
        text = (
            f"I hit the {minutes}-minute limit before I could pause cleanly. Everything up to my last "
            "completed step is saved; reply in this thread (or say `continue`) to pick up from there."
        )
        return [
            PatchStatus(
                base | {"phase": Phase.TIMED_OUT.value, "error": f"stopped at the {minutes}-minute limit"}
            ),
            Notify(text, Reaction.PAUSED, job.requested_ts),
            RecordEvent("Warning", "TimedOut", f"Job {job.name} exceeded its deadline"),
        ]
    if pod is not None and pod.terminated_reason == "OOMKilled":
        text = (
            "My worker ran out of memory and was stopped. Work up to the last completed step is saved. "
            "Ask a Peerbot administrator to raise WORKER_MEMORY (worker.resources in the chart), "
            "or ask me for a smaller step."
        )
        return [
            PatchStatus(
                base | {"phase": Phase.FAILED.value, "error": "the worker ran out of memory (OOMKilled)"}
            ),
            Notify(text, Reaction.FAILED, job.requested_ts),
            RecordEvent("Warning", "OutOfMemory", f"Job {job.name}: container OOMKilled"),
        ]
    if not job.complete and _lost_pod(job):
        why = (pod.reason if pod and pod.reason else None) or (
            "deleted" if pod is None or pod.deleting else "lost"
        )
        if job.attempt < MAX_ATTEMPTS:
            retry_name = f"{job_name(conversation.name, job.turn)}-a{job.attempt + 1}"
            request = TurnRequest(
                conversation=conversation.name,
                turn=job.turn,
                attempt=job.attempt + 1,
                job_name=retry_name,
                spec=conversation.spec,
                answered_ts=status.answered_ts,
            )
            patch = {k: v for k, v in base.items() if k != "finishedAt"}
            return [
                StartTurn(request),
                PatchStatus(patch | {"phase": Phase.RUNNING.value, "job": retry_name}),
                RecordEvent("Warning", "Retrying", f"The worker pod of {job.name} was {why}; retrying once"),
            ]
        text = (
            f"My worker was stopped by the cluster twice ({why}) and I gave up on this turn. "
            "Work up to the last completed step is saved; reply here to try again."
        )
        return [
            PatchStatus(base | {"phase": Phase.FAILED.value, "error": f"the worker pod was {why} twice"}),
            Notify(text, Reaction.FAILED, job.requested_ts),
            RecordEvent("Warning", "PodLost", f"The worker pod of {job.name} was {why}"),
        ]
    exit_code = pod.exit_code if pod else None
    error = (
        f"the worker stopped unexpectedly (exit code {exit_code})"
        if exit_code is not None
        else ("the worker stopped without reporting an outcome")
    )
    text = (
        f"Something went wrong on my side: {error}. Work up to the last completed step is saved; "
        "reply here to try again. If it keeps happening, a Peerbot administrator can find the details "
        f"with `kubectl describe conversation {conversation.name}`."
    )
    return [
        PatchStatus(base | {"phase": Phase.FAILED.value, "error": error}),
        Notify(text, Reaction.FAILED, job.requested_ts),
        RecordEvent("Warning", "TurnFailed", error),
    ]
