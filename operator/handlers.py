"""kopf handlers: thin edges that gather what kopf knows and hand one Conversation to the Reconciler.

kopf keeps in-memory indexes of the worker Jobs and pods (filled before any handler runs, so a restarted
operator sees every existing Job before it decides anything), so a reconcile costs one GET of the
Conversation and no list calls. Conversation changes, Job and pod events, and one operator-wide resync
loop (active Conversations every 15 seconds, idle ones hourly) all end in the same
:meth:`Reconciler.reconcile`.

Why one resync loop and not ``@kopf.timer`` per Conversation: a kopf timer is an asyncio task per object
(memory that grows with every finished Conversation), it makes kopf put a finalizer on every Conversation
(an extra PATCH before the first turn can start, and deletions that wait for the operator), and on
shutdown kopf's daemon killer stops the timers *before* the per-object workers have drained their queued
events: an event processed in that window spawns a fresh timer that nothing stops, and kopf then waits its
fixed 5 seconds for "hung tasks" before cancelling it (kopf 1.45 fixed the same race for pausing, #1272,
not for exiting). The loop is started in ``@kopf.on.startup`` and stopped first thing in
``@kopf.on.cleanup``, so the operator stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import kopf
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import claim, constants
from peerbot.conversation import Phase
from peerbot.kube import POD_NAMESPACE_FILE, api_client, current_namespace
from peerbot.logs import get_logger
from peerbot.operator.jobs import MANAGED_BY, job_settings_from, job_view
from peerbot.operator.pool import WarmPool, index_jobs, index_source, warm_launcher
from peerbot.operator.reconcile import Reconciler, planner_settings
from peerbot.operator.telemetry import Observability
from peerbot.operator.warm import warm_job_view
from peerbot.planner import ClusterView, JobView, Plan
from peerbot.settings import OperatorSettings, load_settings

log = get_logger(__name__)

#: The registry these handlers live in: kopf's default one when this module is first imported, which is
#: what ``kopf run -m peerbot.operator`` uses. It is named so that whoever runs the operator in-process
#: (``peerbot operator``, tests, the demo) can pass it explicitly: kopf's test runner replaces the
#: process-wide default registry with whatever registry it was last given.
REGISTRY: Final = kopf.get_default_registry()

CONVERSATIONS = (constants.API_GROUP, constants.API_VERSION, constants.CONVERSATION_PLURAL)
WORKERS = {"app.kubernetes.io/managed-by": MANAGED_BY}
ACTIVE_PHASES = {None, "", Phase.PENDING.value, Phase.QUEUED.value, Phase.RUNNING.value}
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
#: Conversations the resync loop reconciles at the same time: enough to get through a thousand active
#: ones well inside the 15-second interval, few enough not to flood the API server with GETs.
RESYNC_CONCURRENCY: Final = 16
#: The kopf indexes below, by the keyword name kopf passes them under.
INDEXES: Final = (
    "worker_jobs",
    "worker_pods",
    "warm_turns",
    "queued_conversations",
    "conversations_by_activity",
)
#: Pods of the warm pool (docs/warm-workers.md), idle or claimed.
POOL_PODS = {claim.LABEL_POOL: kopf.PRESENT}


@kopf.on.login(registry=REGISTRY)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig named by ``KUBECONFIG`` when kopf runs.

    kopf's default login goes through the kubernetes client, which fixes the kubeconfig path when it is
    imported; reading it here, at login, is what lets tests and ``peerbot demo`` point it elsewhere.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST") and POD_NAMESPACE_FILE.exists():
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=REGISTRY)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Create the clients once and keep them in ``memo``; tune kopf for our resources."""
    config = load_settings(OperatorSettings)
    prefix = constants.KOPF_ANNOTATION_PREFIX
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.posting.level = logging.INFO
    # Watches end and restart on their own: never a watch that hangs forever on a dead connection.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # On shutdown, a timer in the middle of a reconcile is given a moment to finish it rather than
    # being orphaned mid-request (which leaves its connection to be torn down the slow way).
    settings.background.instant_exit_timeout = 2.0
    # Namespaced: no cluster-wide scanning of namespaces and CRDs (the chart grants nothing cluster-wide).
    settings.scanning.disabled = True
    namespace = current_namespace(config.peerbot_namespace)
    token = config.metrics_auth_token.get_secret_value() if config.metrics_auth_token else None
    observability = memo.observability = Observability(token, maintenance=config.peerbot_maintenance)
    api = await api_client()
    slack = AsyncWebClient(
        session=aiohttp.ClientSession(),  # one connection pool, not a new session per call
        token=config.slack_bot_token.get_secret_value(),
        base_url=config.slack_api_url,
        retry_handlers=observability.slack_retry_handlers(),  # 429 (Retry-After), connections, 5xx; counted
    )
    job_settings = job_settings_from(config, namespace)
    memo.config = config
    memo.api = api
    memo.slack = slack
    memo.closed = False
    # With the warm pool on, a turn claims an idle pod when there is one, else it gets a Job as always.
    launcher, memo.pool = warm_launcher(
        api,
        job_settings,
        config,
        index_source(kwargs["pool_pods"]),
        observability.metrics.registry,
        jobs=index_jobs(kwargs["worker_jobs"]),
    )
    memo.reconciler = Reconciler(
        api=api,
        slack=slack,
        launcher=launcher,
        planner_settings=planner_settings(
            config.session_timeout_minutes,
            config.max_concurrent_jobs,
            config.conversation_retention_days,
            maintenance=config.peerbot_maintenance,
        ),
        namespace=namespace,
        observer=observability.observer,
        breakers=observability.breakers,
        reactions=config.enable_status_reactions,
    )
    observability.count_phases(kwargs["conversations_by_phase"])
    await observability.start(api, slack, namespace, config.operator_port)
    if config.peerbot_maintenance:
        log.warning("maintenance is on: no new turns start until PEERBOT_MAINTENANCE is switched off")
    # Indexes are passed to startup handlers too (live objects kopf keeps filling); the loop keeps them.
    indexes = {name: kwargs[name] for name in INDEXES}
    memo.rechecks = {}
    memo.recheck_wake = asyncio.Event()
    memo.resync = asyncio.create_task(_resync_loop(memo, indexes), name="peerbot resync")
    if memo.pool is not None:
        await memo.pool.start()
    log.info("operator started", namespace=namespace, image=config.worker_image)


@kopf.on.cleanup(registry=REGISTRY)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop, close what startup opened (handlers still in flight see ``closed``)."""
    memo.closed = True
    resync: asyncio.Task[None] | None = memo.get("resync")
    if resync is not None:
        resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync
    pool: WarmPool | None = memo.get("pool")
    if pool is not None:
        await pool.stop()
    observability: Observability | None = memo.get("observability")
    if observability is not None:
        await observability.stop()
    api = memo.get("api")
    if api is not None:
        await api.close()
    slack = memo.get("slack")
    if slack is not None and slack.session is not None:
        await slack.session.close()


# --- Indexes: what kopf keeps in memory for us -----------------------------------------------------------
#
# Indexers are coroutines on purpose: kopf runs a plain ``def`` handler in a thread pool, and every event of
# every object passes through each indexer, so thread hops (and the GIL's switch interval) would add
# milliseconds to each event of a burst.


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    return {"metadata": copy.deepcopy(dict(body.metadata)), "status": copy.deepcopy(dict(body.status))}


@kopf.index("batch", "v1", "jobs", labels=WORKERS, registry=REGISTRY)
async def worker_jobs(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Worker Jobs by Conversation name."""
    conversation = labels.get(constants.LABEL_CONVERSATION)
    return {conversation: _snapshot(body)} if conversation else None


@kopf.index("", "v1", "pods", labels=WORKERS, registry=REGISTRY)
async def worker_pods(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Worker pods by Job name (from the owner reference the Job controller sets, else its labels)."""
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == "Job" and owner.get("name"):
            return {owner["name"]: _snapshot(body)}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return {labels[key]: _snapshot(body)}
    return None


@kopf.index("", "v1", "pods", labels={claim.LABEL_POOL: claim.POOL_CLAIMED}, registry=REGISTRY)
async def warm_turns(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Claimed warm-pool pods by Conversation: a warm turn's worker, read like a Job's pod."""
    conversation = labels.get(constants.LABEL_CONVERSATION)
    return {conversation: _snapshot(body)} if conversation else None


@kopf.index("", "v1", "pods", labels=POOL_PODS, registry=REGISTRY)
async def pool_pods(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every warm-pool pod by name: what the pool manager reads instead of listing pods."""
    return {name: _snapshot(body)}


@kopf.index(*CONVERSATIONS, registry=REGISTRY)
async def conversations_by_activity(name: str, status: kopf.Status, **_: Any) -> dict[str, str]:
    """Conversation names under ``active`` (pending, queued, running) or ``idle``: what the resync reads."""
    return {"active" if status.get("phase") in ACTIVE_PHASES else "idle": name}


@kopf.index(*CONVERSATIONS, registry=REGISTRY)
async def conversations_by_phase(name: str, status: kopf.Status, **_: Any) -> dict[str, str]:
    """Conversation names by phase: the operator's ``conversations{phase}`` gauge counts them."""
    return {str(status.get("phase") or Phase.PENDING.value): name}


@kopf.index(*CONVERSATIONS, registry=REGISTRY)
async def queued_conversations(
    name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, tuple[str, str]] | None:
    """Conversations waiting for capacity, with the message they wait to answer (for their order)."""
    if status.get("phase") == Phase.QUEUED.value:
        return {"queued": (str(spec.get("requestedTs", "")), name)}
    return None


def _jobs_of(name: str, jobs: kopf.Index[str, Any], pods: kopf.Index[str, Any]) -> list[JobView]:
    views = []
    for job in jobs.get(name, []):
        view = job_view(job, list(pods.get(job["metadata"]["name"], [])))
        if view is not None:
            views.append(view)
    return views


def _cluster(
    memo: kopf.Memo, jobs: kopf.Index[str, Any], queued: kopf.Index[str, Any], warm: kopf.Index[str, Any]
) -> ClusterView:
    if not memo.config.max_concurrent_jobs:
        return ClusterView()
    running = 0
    for store in jobs.values():
        for job in store:
            view = job_view(job, [])
            if view is not None and view.running:
                running += 1
    for store in warm.values():  # warm turns count against the limit like Jobs
        for pod in store:
            warm_view = warm_job_view(pod)
            if warm_view is not None and warm_view.running:
                running += 1
    queue = tuple(name for _, name in sorted(queued.get("queued", [])))
    return ClusterView(running_jobs=running, queue=queue)


async def _reconcile(memo: kopf.Memo, name: str, indexes: dict[str, Any]) -> Plan:
    """Reconcile one Conversation with the views kopf's indexes (passed to every handler) give."""
    if memo.get("closed"):
        return Plan()
    jobs, pods, queued = indexes["worker_jobs"], indexes["worker_pods"], indexes["queued_conversations"]
    warm = indexes["warm_turns"]
    views = _jobs_of(name, jobs, pods) + [
        view for view in (warm_job_view(pod) for pod in warm.get(name, [])) if view is not None
    ]
    reconciler: Reconciler = memo.reconciler
    return await reconciler.reconcile(name, views, _cluster(memo, jobs, queued, warm))


# --- Handlers ------------------------------------------------------------------------------------------


@kopf.on.resume(*CONVERSATIONS, registry=REGISTRY)
@kopf.on.create(*CONVERSATIONS, registry=REGISTRY)
@kopf.on.update(*CONVERSATIONS, registry=REGISTRY)
async def conversation_changed(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """A new thread, a follow-up, a cancel, or an operator restart."""
    _recheck_later(memo, name, await _reconcile(memo, name, kwargs))


async def _resync_once(memo: kopf.Memo, names: list[str], indexes: Mapping[str, Any]) -> None:
    """Reconcile ``names``, a few at a time; a failure is logged and left to the next round."""
    limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def one(name: str) -> None:
        async with limit:
            if memo.get("closed"):
                return
            try:
                _recheck_later(memo, name, await _reconcile(memo, name, dict(indexes)))
            except (kopf.TemporaryError, kopf.PermanentError) as error:
                log.warning("resync deferred", conversation=name, error=str(error))
            except Exception:  # one Conversation's trouble must not stop the loop
                log.exception("resync failed", conversation=name)

    await asyncio.gather(*(one(name) for name in names))


async def _resync_loop(memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    """The floor under the events: active Conversations are re-planned every
    ``RECONCILE_INTERVAL_SECONDS`` (a missed watch event, the capacity queue moving along), idle ones every
    ``IDLE_SWEEP_INTERVAL_SECONDS`` so the retention applies without any event, and any Conversation whose
    plan asked to be looked at again after a grace period (:func:`_recheck_later`) when that is due. The
    resume handlers already look at every Conversation at start, so the first round waits one interval.
    Cancelled by cleanup.
    """
    loop = asyncio.get_running_loop()
    rechecks: dict[str, float] = memo.rechecks
    wake: asyncio.Event = memo.recheck_wake
    next_round = loop.time() + constants.RECONCILE_INTERVAL_SECONDS
    next_idle_sweep = loop.time() + constants.IDLE_SWEEP_INTERVAL_SECONDS
    while not memo.get("closed"):
        due = min([next_round, *rechecks.values()])
        wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - loop.time())):
                await wake.wait()  # a new recheck may be due sooner than what we were waiting for
        now = loop.time()
        names = [name for name, at in rechecks.items() if at <= now]
        for name in names:
            del rechecks[name]
        if now >= next_round:
            by_activity = indexes["conversations_by_activity"]
            names += list(by_activity.get("active", []))
            next_round = now + constants.RECONCILE_INTERVAL_SECONDS
            if now >= next_idle_sweep:
                names += list(by_activity.get("idle", []))
                next_idle_sweep = now + constants.IDLE_SWEEP_INTERVAL_SECONDS
        if names:
            await _resync_once(memo, list(dict.fromkeys(names)), indexes)


def _recheck_later(memo: kopf.Memo, name: str, result: Plan) -> None:
    """Have the resync loop plan ``name`` again when the grace period its plan is waiting out ends."""
    if result.recheck_after is None or "rechecks" not in memo:
        return
    at = asyncio.get_running_loop().time() + result.recheck_after.total_seconds()
    memo.rechecks[name] = min(memo.rechecks.get(name, at), at)
    memo.recheck_wake.set()


async def _after_worker_event(labels: kopf.Labels, memo: kopf.Memo, indexes: dict[str, Any]) -> None:
    conversation = labels.get(constants.LABEL_CONVERSATION)
    if not conversation or "reconciler" not in memo:
        return
    try:
        _recheck_later(memo, conversation, await _reconcile(memo, conversation, indexes))
        # A finished Job frees capacity: let the head of the queue start without waiting for its timer.
        queue = sorted(indexes["queued_conversations"].get("queued", []))
        if queue:
            await _reconcile(memo, queue[0][1], indexes)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        # Event handlers are not retried by kopf; the Conversation's own handlers and timer are.
        log.warning("reconcile after worker event deferred", conversation=conversation, error=str(error))


@kopf.on.event("batch", "v1", "jobs", labels=WORKERS, registry=REGISTRY)
async def job_event(labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A worker Job changed (finished, failed, deleted): record it and start what waits."""
    await _after_worker_event(labels, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=WORKERS, registry=REGISTRY)
async def pod_event(labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A worker pod changed: a pull failure or eviction shows here before the Job says anything."""
    await _after_worker_event(labels, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=POOL_PODS, registry=REGISTRY)
async def pool_pod_event(memo: kopf.Memo, **_: Any) -> None:
    """A pool pod changed (became Ready, exited, was claimed or deleted): the pool looks at once."""
    pool: WarmPool | None = memo.get("pool")
    if pool is not None:
        pool.wake()
