"""kopf handlers: thin edges that gather what kopf knows and hand one Conversation to the Reconciler.

kopf keeps in-memory indexes of the worker Jobs and pods (filled before any handler runs, so a restarted
operator sees every existing Job before it decides anything), so a reconcile costs one GET of the
Conversation and no list calls. Conversation changes, Job and pod events, and a slow timer for active
Conversations all end in the same :meth:`Reconciler.reconcile`.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import aiohttp
import kopf
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import constants
from peerbot.conversation import Phase
from peerbot.kube import POD_NAMESPACE_FILE, api_client, current_namespace
from peerbot.logs import get_logger
from peerbot.operator.jobs import MANAGED_BY, JobSettings, job_view
from peerbot.operator.launcher import JobLauncher
from peerbot.operator.reconcile import Reconciler, planner_settings
from peerbot.planner import ClusterView, JobView
from peerbot.settings import OperatorSettings, load_settings

log = get_logger(__name__)

CONVERSATIONS = (constants.API_GROUP, constants.API_VERSION, constants.CONVERSATION_PLURAL)
WORKERS = {"app.kubernetes.io/managed-by": MANAGED_BY}
ACTIVE_PHASES = {None, "", Phase.PENDING.value, Phase.QUEUED.value, Phase.RUNNING.value}
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig named by ``KUBECONFIG`` when kopf runs.

    kopf's default login goes through the kubernetes client, which fixes the kubeconfig path when it is
    imported; reading it here, at login, is what lets tests and ``peerbot demo`` point it elsewhere.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST") and POD_NAMESPACE_FILE.exists():
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
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
    api = await api_client()
    slack = AsyncWebClient(
        session=aiohttp.ClientSession(),  # one connection pool, not a new session per call
        token=config.slack_bot_token.get_secret_value(),
        base_url=config.slack_api_url,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            AsyncConnectionErrorRetryHandler(),
        ],
    )
    job_settings = JobSettings(
        namespace=namespace,
        image=config.worker_image,
        service_account=config.worker_service_account,
        secret_name=config.worker_secret_name,
        cpu=config.worker_cpu,
        memory=config.worker_memory,
        session_timeout_minutes=config.session_timeout_minutes,
        config_map=config.worker_config_map,
        ttl_seconds=config.job_ttl_seconds,
        spot=config.worker_spot,
    )
    memo.config = config
    memo.api = api
    memo.slack = slack
    memo.reconciler = Reconciler(
        api=api,
        slack=slack,
        launcher=JobLauncher(api, job_settings),
        planner_settings=planner_settings(
            config.session_timeout_minutes, config.max_concurrent_jobs, config.conversation_retention_days
        ),
        namespace=namespace,
    )
    log.info("operator started", namespace=namespace, image=config.worker_image)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Close what startup opened (handlers still in flight see ``closed`` and stop)."""
    memo.closed = True
    api = memo.get("api")
    if api is not None:
        await api.close()
    slack = memo.get("slack")
    if slack is not None and slack.session is not None:
        await slack.session.close()


# --- Indexes: what kopf keeps in memory for us -----------------------------------------------------------


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    return {"metadata": copy.deepcopy(dict(body.metadata)), "status": copy.deepcopy(dict(body.status))}


@kopf.index("batch", "v1", "jobs", labels=WORKERS)
def worker_jobs(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Worker Jobs by Conversation name."""
    conversation = labels.get(constants.LABEL_CONVERSATION)
    return {conversation: _snapshot(body)} if conversation else None


@kopf.index("", "v1", "pods", labels=WORKERS)
def worker_pods(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Worker pods by Job name (from the owner reference the Job controller sets, else its labels)."""
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == "Job" and owner.get("name"):
            return {owner["name"]: _snapshot(body)}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return {labels[key]: _snapshot(body)}
    return None


@kopf.index(*CONVERSATIONS)
def queued_conversations(
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


def _cluster(memo: kopf.Memo, jobs: kopf.Index[str, Any], queued: kopf.Index[str, Any]) -> ClusterView:
    if not memo.config.max_concurrent_jobs:
        return ClusterView()
    running = 0
    for store in jobs.values():
        for job in store:
            view = job_view(job, [])
            if view is not None and view.running:
                running += 1
    queue = tuple(name for _, name in sorted(queued.get("queued", [])))
    return ClusterView(running_jobs=running, queue=queue)


async def _reconcile(memo: kopf.Memo, name: str, indexes: dict[str, Any]) -> None:
    """Reconcile one Conversation with the views kopf's indexes (passed to every handler) give."""
    if memo.get("closed"):
        return
    jobs, pods, queued = indexes["worker_jobs"], indexes["worker_pods"], indexes["queued_conversations"]
    reconciler: Reconciler = memo.reconciler
    await reconciler.reconcile(name, _jobs_of(name, jobs, pods), _cluster(memo, jobs, queued))


# --- Handlers ------------------------------------------------------------------------------------------


@kopf.on.resume(*CONVERSATIONS)
@kopf.on.create(*CONVERSATIONS)
@kopf.on.update(*CONVERSATIONS)
async def conversation_changed(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """A new thread, a follow-up, a cancel, or an operator restart."""
    await _reconcile(memo, name, kwargs)


def _is_active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") in ACTIVE_PHASES


@kopf.timer(*CONVERSATIONS, interval=constants.RECONCILE_INTERVAL_SECONDS, when=_is_active)
async def recheck_active(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """The floor under the events: an active Conversation is re-planned now and then."""
    await _reconcile(memo, name, kwargs)


def _is_idle(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in ACTIVE_PHASES


@kopf.timer(
    *CONVERSATIONS,
    interval=constants.IDLE_SWEEP_INTERVAL_SECONDS,
    initial_delay=constants.IDLE_SWEEP_INTERVAL_SECONDS,  # resume handlers already look at every one at start
    when=_is_idle,
)
async def sweep_idle(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Idle Conversations are looked at now and then, so the retention applies without any event."""
    await _reconcile(memo, name, kwargs)


async def _after_worker_event(labels: kopf.Labels, memo: kopf.Memo, indexes: dict[str, Any]) -> None:
    conversation = labels.get(constants.LABEL_CONVERSATION)
    if not conversation or "reconciler" not in memo:
        return
    try:
        await _reconcile(memo, conversation, indexes)
        # A finished Job frees capacity: let the head of the queue start without waiting for its timer.
        queue = sorted(indexes["queued_conversations"].get("queued", []))
        if queue:
            await _reconcile(memo, queue[0][1], indexes)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        # Event handlers are not retried by kopf; the Conversation's own handlers and timer are.
        log.warning("reconcile after worker event deferred", conversation=conversation, error=str(error))


@kopf.on.event("batch", "v1", "jobs", labels=WORKERS)
async def job_event(labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A worker Job changed (finished, failed, deleted): record it and start what waits."""
    await _after_worker_event(labels, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=WORKERS)
async def pod_event(labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A worker pod changed: a pull failure or eviction shows here before the Job says anything."""
    await _after_worker_event(labels, memo, kwargs)
