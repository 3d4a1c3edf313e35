"""The operator's service object: read one Conversation's world, ask the planner, apply the plan.

Handlers in :mod:`peerbot.operator.handlers` only gather what kopf already knows (its in-memory indexes
of worker Jobs and pods) and call :meth:`Reconciler.reconcile`. One Conversation is reconciled by one
coroutine at a time (a per-name lock), because Job events and Conversation events for the same thread
can arrive together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import constants
from peerbot.conversation import Conversation, Phase
from peerbot.logs import get_logger
from peerbot.operator.jobs import job_view, pod_view
from peerbot.operator.launcher import Launch, TurnLauncher
from peerbot.operator.notify import notify_thread
from peerbot.operator.pool import read_warm_turn
from peerbot.operator.telemetry import TurnObserver
from peerbot.planner import (
    ClusterView,
    DeleteConversation,
    DeleteJob,
    JobView,
    Notify,
    PatchStatus,
    Plan,
    PlannerSettings,
    RecordEvent,
    StartTurn,
    plan,
    plan_invalid_spec,
    spec_problems,
)
from peerbot.resilience import Breakers, Dependency

log = get_logger(__name__)

#: Who Events posted outside kopf's handlers come from (kopf's own say "kopf").
EVENT_SOURCE = "peerbot-operator"
#: Event messages are cut here, as kopf cuts its own (events.k8s.io/v1 refuses notes over 1 KiB).
EVENT_MESSAGE_LIMIT = 1024
#: Kubernetes API errors worth retrying (throttling, conflicts, server trouble); others are permanent.
RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}


class _KeyedLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it (memory stays flat)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class Reconciler:
    """Reads, plans and applies for the Conversations of one namespace."""

    api: client.ApiClient
    slack: AsyncWebClient
    launcher: TurnLauncher
    planner_settings: PlannerSettings
    namespace: str
    #: Metrics and audit lines for the turns (None: not reported, as in unit tests).
    observer: TurnObserver | None = None
    #: Circuit breakers by dependency (Slack here); Slack's opens after repeated failures to post.
    breakers: Breakers = field(default_factory=Breakers)
    #: ENABLE_STATUS_REACTIONS: whether notices add a reaction.
    reactions: bool = True
    _locks: _KeyedLocks = field(default_factory=_KeyedLocks)

    def __post_init__(self) -> None:
        # The generated client's type stubs know neither plain-dict bodies nor _content_type and
        # _preload_content, which this code needs; it is used untyped on purpose.
        self._custom: Any = client.CustomObjectsApi(self.api)
        self._batch: Any = client.BatchV1Api(self.api)
        self._core: Any = client.CoreV1Api(self.api)

    async def _read(self, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                constants.API_GROUP,
                constants.API_VERSION,
                self.namespace,
                constants.CONVERSATION_PLURAL,
                name,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return body

    async def reconcile(
        self, name: str, jobs: list[JobView], cluster: ClusterView | None = None, now: datetime | None = None
    ) -> Plan:
        """Bring one Conversation one step closer to what its spec asks for; returns what was done.

        Raises :class:`kopf.TemporaryError` when the API server should be asked again later, and
        :class:`kopf.PermanentError` for a spec nobody can act on (after recording it as ``Failed``).
        """
        now = now or datetime.now(UTC)
        async with self._locks.hold(name):
            try:
                body = await self._read(name)
                if body is None:
                    return Plan()
                problem = spec_problems(body.get("spec"))
                if problem is not None:
                    result = plan_invalid_spec(problem, body.get("status"), now)
                    await self._apply(body, None, result)
                    raise kopf.PermanentError(f"Conversation {name} cannot be acted on: {problem}")
                conversation = Conversation.model_validate(body)
                jobs = await self._confirm_recorded_job(conversation, jobs)
                jobs = await self._with_pods_of_finished_job(conversation, jobs)
                deleting = bool((body.get("metadata") or {}).get("deletionTimestamp"))
                result = plan(conversation, jobs, now, self.planner_settings, cluster, deleting=deleting)
                body = await self._apply(body, conversation, result)
                if self.observer is not None:
                    self.observer.observe(conversation, jobs, result, now)
                if _ended_a_turn(result) and not deleting:
                    # A follow-up that arrived while the Job ran waits behind the outcome just recorded;
                    # nothing else would wake this Conversation up (status changes are not kopf updates).
                    conversation = Conversation.model_validate(body)
                    following = plan(conversation, jobs, now, self.planner_settings, cluster)
                    await self._apply(body, conversation, following)
                    if self.observer is not None:
                        self.observer.observe(conversation, jobs, following, now)
                    result = Plan(
                        [*result.actions, *following.actions], recheck_after=following.recheck_after
                    )
                return result
            except ApiException as error:
                if self.observer is not None:
                    self.observer.metrics.error(f"kubernetes_{error.status}")
                if error.status in RETRYABLE_STATUS:
                    raise kopf.TemporaryError(
                        f"Kubernetes API answered {error.status} {error.reason}; retrying", delay=2
                    ) from error
                raise

    async def _with_pods_of_finished_job(
        self, conversation: Conversation, jobs: list[JobView]
    ) -> list[JobView]:
        """Make sure a newly finished Job carries its pods (and so the worker's report) if they exist.

        Jobs and pods come through separate watch streams: under load the Job's "complete" event can be
        handled before kopf's index has seen its pod at all, and a finished Job without a pod reads as a
        worker that reported nothing (``Failed``). Asking the API once for that Job's pods, before its
        outcome is recorded, keeps a busy operator from failing turns that succeeded.
        """
        if not jobs:
            return jobs
        latest = max(jobs, key=lambda job: (job.turn, job.attempt))
        already_recorded = conversation.status.job == latest.name and conversation.status.phase not in (
            Phase.RUNNING,
            Phase.PENDING,
            Phase.QUEUED,
        )
        if not latest.finished or latest.pods or already_recorded:
            return jobs
        pods = await self._pods_of_job(conversation.name, latest.name)
        if not pods:
            return jobs  # really gone (deleted, lost with its node): the planner says so
        found = replace(latest, pods=tuple(pod_view(pod) for pod in pods))
        return [found if job is latest else job for job in jobs]

    async def _pods_of_job(self, conversation: str, job: str) -> list[dict[str, Any]]:
        response = await self._core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{constants.LABEL_CONVERSATION}={conversation}",
            _preload_content=False,
        )
        pods: list[dict[str, Any]] = [
            pod
            for pod in json.loads(await response.read()).get("items", [])
            if any(ref.get("name") == job for ref in pod["metadata"].get("ownerReferences") or [])
        ]
        pods.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp", "")))
        return pods

    async def _confirm_recorded_job(self, conversation: Conversation, jobs: list[JobView]) -> list[JobView]:
        """Make sure the Job the status says is running is in ``jobs`` if it exists at all.

        kopf's index sees a Job only when its watch event arrives; a follow-up that comes right after the
        Job was created can be planned before that. Asking the API once in that case keeps the planner's
        "at most one Job at a time" true instead of trusting a cache that is a moment behind.
        """
        recorded = conversation.status.job
        if (
            conversation.status.phase != Phase.RUNNING
            or not recorded
            or any(j.name == recorded for j in jobs)
        ):
            return jobs
        # Without _preload_content the client raises for no status: a 404 arrives as a response.
        response = await self._batch.read_namespaced_job(recorded, self.namespace, _preload_content=False)
        if response.status == 404:  # no Job: perhaps a warm turn, whose worker is a claimed pod
            response.release()
            return [*jobs, *await read_warm_turn(self._core, self.namespace, conversation.name, recorded)]
        if response.status >= 300:
            raise ApiException(status=response.status, reason=response.reason)
        job = json.loads(await response.read())
        response = await self._core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{constants.LABEL_CONVERSATION}={conversation.name}",
            _preload_content=False,
        )
        pods = [
            pod
            for pod in json.loads(await response.read()).get("items", [])
            if any(ref.get("name") == recorded for ref in pod["metadata"].get("ownerReferences") or [])
        ]
        view = job_view(job, pods)
        return [*jobs, view] if view is not None else jobs

    async def _apply(
        self, body: dict[str, Any], conversation: Conversation | None, result: Plan
    ) -> dict[str, Any]:
        """Apply the actions in order; returns the Conversation as the last status patch left it."""
        name = body["metadata"]["name"]
        bound = log.bind(conversation=name)
        if result.actions:
            bound.debug("plan", actions=[repr(action) for action in result.actions])
        launched: dict[str, Any] = {}  # how the turn started (warm or cold), for the status patch after it
        for action in result.actions:
            match action:
                case StartTurn(request=request):
                    started = await self.launcher.start(request, body["metadata"].get("uid", ""), _now())
                    bound.info("turn started" if started else "turn already started", job=request.job_name)
                    if started is not None:
                        launched = {"startedWarm": started is Launch.WARM}
                case PatchStatus(patch=patch):
                    patch, launched = {**patch, **launched}, {}
                    patched = await self._custom.patch_namespaced_custom_object_status(
                        constants.API_GROUP,
                        constants.API_VERSION,
                        self.namespace,
                        constants.CONVERSATION_PLURAL,
                        name,
                        {"status": patch},
                        # The client would send a JSON patch for a dict; this is a merge patch.
                        _content_type="application/merge-patch+json",
                    )
                    body = patched if isinstance(patched, dict) else body
                case DeleteJob(name=job, reason=reason):
                    try:
                        await self._batch.delete_namespaced_job(
                            job, self.namespace, propagation_policy="Background"
                        )
                    except ApiException as error:
                        if error.status != 404:
                            raise
                    await self.launcher.stop(job)  # a warm turn has a claimed pod instead of a Job
                    bound.info("job deleted", job=job, reason=reason)
                case Notify() if conversation is not None:
                    await notify_thread(
                        self.slack,
                        conversation.spec.channel,
                        conversation.spec.thread_ts,
                        action,
                        breaker=self.breakers[Dependency.SLACK],
                        on_fallback=self._fallback,
                        reactions=self.reactions,
                    )
                case RecordEvent(type=kind, reason=reason, message=message):
                    await self._record_event(body, kind, reason, message)
                case DeleteConversation(reason=reason):
                    try:
                        await self._custom.delete_namespaced_custom_object(
                            constants.API_GROUP,
                            constants.API_VERSION,
                            self.namespace,
                            constants.CONVERSATION_PLURAL,
                            name,
                        )
                    except ApiException as error:
                        if error.status != 404:
                            raise
                    bound.info("conversation deleted", reason=reason)
        return body

    async def _record_event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the Conversation: through kopf's queue (posted in the background, with
        retries) inside kopf's handlers, directly otherwise. kopf's queue exists only in the context of its
        per-object handlers; the resync loop (and any caller outside kopf) has none."""
        try:
            kopf.event(kopf.Body(cast(Any, body)), type=kind, reason=reason, message=message)
            return
        except LookupError:
            pass
        metadata = body.get("metadata") or {}
        now = _now().isoformat().replace("+00:00", "Z")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{metadata.get('name', 'conversation')}.",
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion", f"{constants.API_GROUP}/{constants.API_VERSION}"),
                "kind": body.get("kind", constants.CONVERSATION_KIND),
                "name": metadata.get("name"),
                "namespace": self.namespace,
                "uid": metadata.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:EVENT_MESSAGE_LIMIT],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._core.create_namespaced_event(self.namespace, event)
        except ApiException as error:  # an Event is a courtesy: never a reason to fail the reconcile
            log.warning(
                "event not recorded", conversation=metadata.get("name"), reason=reason, error=error.status
            )

    def _fallback(self, reason: str) -> None:
        if self.observer is not None:
            self.observer.metrics.resilience.fallback(reason)


#: Phases in which a turn has ended and the next request (if any) may start.
_TURN_ENDED = {Phase.WAITING.value, Phase.FAILED.value, Phase.TIMED_OUT.value}


def _ended_a_turn(result: Plan) -> bool:
    """The plan recorded a turn's outcome without starting another (so a waiting request may start now)."""
    if any(isinstance(action, StartTurn | DeleteConversation) for action in result.actions):
        return False
    phases = [action.patch.get("phase") for action in result.actions if isinstance(action, PatchStatus)]
    return any(phase in _TURN_ENDED for phase in phases)


def _now() -> datetime:
    return datetime.now(UTC)


def planner_settings(
    session_timeout_minutes: int, max_concurrent_jobs: int, retention_days: float, maintenance: bool = False
) -> PlannerSettings:
    """The planner's settings from the operator's."""
    return PlannerSettings(
        session_timeout_minutes=session_timeout_minutes,
        max_concurrent_jobs=max_concurrent_jobs,
        retention=timedelta(days=retention_days),
        maintenance=maintenance,
    )
