"""The warm pool's pure core: the idle pod, the claim, a claimed pod as the planner sees it, the pool's plan.

Nothing here does I/O; :mod:`peerbot.operator.pool` reads the world, calls these, and applies what they
return (the same split as ``build_worker_job`` and the planner). ``docs/warm-workers.md`` is the design.

- :func:`build_idle_pod`: an idle worker pod, *derived from* :func:`~peerbot.operator.jobs.build_worker_job`
  so it has exactly a cold Job's pod spec (security, resources, volumes, the Secret references) minus every
  pointer of a turn, plus the claim port, its readiness probe and the SHA-256 of its claim token.
- :func:`claim_patch`: the JSON patch that claims a pod atomically (its first operation tests
  ``peerbot.ai/pool=idle``) and makes it the turn's: labels, owner, deadline.
- :func:`claim_request`: the hand-off body: the very ``PEERBOT_*`` values the turn's cold Job would carry.
- :func:`warm_job_view`: a claimed pod as a :class:`~peerbot.planner.JobView`, so the planner reads a warm
  turn's outcome exactly as a Job's.
- :func:`plan_pool` and :class:`Demand`: what the pool should create and remove, and how big it should be.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from peerbot import claim, constants
from peerbot.conversation import ConversationSpec
from peerbot.operator.jobs import (
    ANNOTATION_REQUESTED_TS,
    LABEL_COMPONENT,
    MANAGED_BY,
    JobSettings,
    build_worker_job,
    job_labels,
    pod_view,
)
from peerbot.planner import NEVER_STARTS, JobView, TurnRequest

#: The kubelet probes the idle worker's /ready this often: a warmed pod is claimable within a second.
READY_PROBE_PERIOD_SECONDS: Final = 1
#: An idle pod that is not Ready this long after it was created is replaced (a node that never came, an
#: image that takes forever): GKE Autopilot adds a node in about a minute, so ten is plenty.
POD_START_TIMEOUT: Final = timedelta(minutes=10)
#: A due pod (idle longer than maxIdleMinutes) is retired once fresh pods cover the target, or at this
#: multiple of the limit whatever happens (make before break, but never keep a pod forever).
HARD_IDLE_FACTOR: Final = 1.5
#: The idle worker exits by itself this long after maxIdleMinutes, in case no operator is left to retire it.
SELF_EXIT_MARGIN: Final = timedelta(minutes=5)
#: Demand is the most turn starts seen in any one minute of this window (about how long a replacement pod
#: takes to start on a fresh node is one minute, so the pool covers the busiest minute lately).
DEMAND_WINDOW: Final = timedelta(minutes=10)
DEMAND_BUCKET: Final = timedelta(minutes=1)
#: The placeholder turn the idle pod spec is derived from; none of its values survive into the pod.
_PLACEHOLDER_SPEC: Final = {
    "team": "T0",
    "channel": "C0",
    "threadTs": "0.0",
    "user": "U0",
    "requestedTs": "0.0",
}
_POINTER_PREFIX: Final = "PEERBOT_"
#: The JSON pointer of the pool label (``/`` in a key is written ``~1``, RFC 6901).
POOL_PATH: Final = "/metadata/labels/" + claim.LABEL_POOL.replace("/", "~1")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def _pointer(key: str) -> str:
    """A JSON pointer token (RFC 6901): ``~`` and ``/`` escaped."""
    return key.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class PoolSettings:
    """The pool's settings (``worker.pool.*`` in the chart; ``WORKER_POOL_*`` for the operator)."""

    size: int = 0
    min: int | None = None
    max: int | None = None
    max_idle: timedelta = timedelta(minutes=30)
    port: int = claim.DEFAULT_CLAIM_PORT
    #: The operator's own pod, owner of the idle pods (so they go when it goes), when it knows itself.
    owner_name: str | None = None
    owner_uid: str | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def low(self) -> int:
        return self.size if self.min is None else self.min

    @property
    def high(self) -> int:
        return self.size if self.max is None else self.max


# --- The idle pod -----------------------------------------------------------------------------------------


def idle_pod_prefix(job_settings: JobSettings) -> str:
    """``<worker service account>-idle-``: release-specific, and says what the pod is."""
    return f"{job_settings.service_account}-idle-"[: constants.KUBERNETES_NAME_LIMIT - 5]


def idle_pod_labels() -> dict[str, str]:
    """The labels of an idle pod: a worker's (so the worker NetworkPolicy applies) and the pool's; nothing of
    any turn."""
    return {
        "app.kubernetes.io/name": "peerbot",
        LABEL_COMPONENT: "worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        claim.LABEL_POOL: claim.POOL_IDLE,
    }


def build_idle_pod(
    job_settings: JobSettings, pool: PoolSettings, token_digest: str, now: datetime
) -> dict[str, Any]:
    """An idle worker pod. Pure: the same inputs give the same manifest.

    Derived from the Job a turn would get, so every hardening of the Job applies here too; what differs:
    no pointer of any turn in the environment, ``peerbot worker --idle``, the claim port with a readiness
    probe, the claim token's digest, and no deadline (set at claim time, counted from the pod's start).
    """
    placeholder = TurnRequest(
        conversation="idle",
        turn=1,
        attempt=1,
        job_name="idle",
        spec=ConversationSpec.model_validate(_PLACEHOLDER_SPEC),
        answered_ts=None,
    )
    job = build_worker_job(placeholder, job_settings, owner_uid="", now=now)
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = [item for item in container["env"] if not str(item["name"]).startswith(_POINTER_PREFIX)]
    idle_timeout = (pool.max_idle + SELF_EXIT_MARGIN).total_seconds()
    env += [
        {"name": claim.ENV_TOKEN_DIGEST, "value": token_digest},
        {"name": claim.ENV_IDLE_PORT, "value": str(pool.port)},
        {"name": claim.ENV_IDLE_TIMEOUT, "value": f"{idle_timeout:g}"},
    ]
    container["env"] = env
    container["args"] = ["worker", "--idle"]
    container["ports"] = [{"name": claim.CLAIM_PORT_NAME, "containerPort": pool.port, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "httpGet": {"path": claim.READY_PATH, "port": claim.CLAIM_PORT_NAME},
        "periodSeconds": READY_PROBE_PERIOD_SECONDS,
        "timeoutSeconds": 1,
        "failureThreshold": 1,
    }
    metadata: dict[str, Any] = {
        "generateName": idle_pod_prefix(job_settings),
        "namespace": job_settings.namespace,
        "labels": idle_pod_labels(),
        "annotations": {claim.ANNOTATION_POOLED_AT: _iso(now)},
    }
    if pool.owner_name and pool.owner_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": pool.owner_name, "uid": pool.owner_uid}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# --- The claim --------------------------------------------------------------------------------------------


def claim_patch(
    pod: dict[str, Any],
    request: TurnRequest,
    job_settings: JobSettings,
    owner_uid: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """The JSON patch that claims ``pod`` for ``request`` (see ``docs/warm-workers.md``, "The claim").

    Its first operations test that the pod is still idle and still the same pod: of two claims of one pod,
    the API server applies exactly one; the other is answered 422.
    """
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    started = _parse_time(status.get("startTime")) or _parse_time(metadata.get("creationTimestamp")) or now
    timeout = job_settings.session_timeout_minutes * 60
    deadline = max(1, math.ceil((now - started).total_seconds())) + timeout
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": POOL_PATH, "value": claim.POOL_IDLE},
        {"op": "test", "path": "/metadata/uid", "value": metadata.get("uid", "")},
        {"op": "replace", "path": POOL_PATH, "value": claim.POOL_CLAIMED},
    ]
    current = metadata.get("labels") or {}
    for key, value in job_labels(request).items():
        if current.get(key) != value:
            ops.append({"op": "add", "path": f"/metadata/labels/{_pointer(key)}", "value": value})
    annotations = {
        claim.ANNOTATION_JOB: request.job_name,
        claim.ANNOTATION_CLAIMED_AT: _iso(now),
        ANNOTATION_REQUESTED_TS: request.spec.requested_ts,
    }
    if not metadata.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
    else:
        ops += [
            {"op": "add", "path": f"/metadata/annotations/{_pointer(key)}", "value": value}
            for key, value in annotations.items()
        ]
    ops += [
        {
            "op": "add",  # replaces an owner (the operator's pod) when there is one
            "path": "/metadata/ownerReferences",
            "value": [
                {
                    "apiVersion": f"{constants.API_GROUP}/{constants.API_VERSION}",
                    "kind": constants.CONVERSATION_KIND,
                    "name": request.conversation,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": deadline},
    ]
    return ops


def unclaim_patch(job_name: str, request: TurnRequest) -> list[dict[str, Any]]:
    """Undo a claim whose hand-off failed: the pod stops being the turn's (``pool=failed``) before it is
    deleted, so the planner never sees it as the turn's worker next to the Job that replaces it."""
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": POOL_PATH, "value": claim.POOL_CLAIMED},
        {"op": "test", "path": f"/metadata/annotations/{_pointer(claim.ANNOTATION_JOB)}", "value": job_name},
        {"op": "replace", "path": POOL_PATH, "value": claim.POOL_FAILED},
    ]
    for key in job_labels(request):
        if key.startswith(f"{constants.LABEL_PREFIX}/"):
            ops.append({"op": "remove", "path": f"/metadata/labels/{_pointer(key)}"})
    return ops


def retire_patch() -> list[dict[str, Any]]:
    """Take an idle pod out of the pool before deleting it: the same ``test`` as a claim, so a pod is
    either claimed or retired, never both."""
    return [
        {"op": "test", "path": POOL_PATH, "value": claim.POOL_IDLE},
        {"op": "replace", "path": POOL_PATH, "value": claim.POOL_RETIRING},
    ]


def claim_request(
    request: TurnRequest, job_settings: JobSettings, owner_uid: str, now: datetime
) -> claim.ClaimRequest:
    """The hand-off: the turn's ``PEERBOT_*`` pointers, taken from the cold Job this turn would have been."""
    job = build_worker_job(request, job_settings, owner_uid, now)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    pointers = {
        str(item["name"]): str(item["value"])
        for item in env
        if "value" in item and item["name"] in claim.POINTERS
    }
    return claim.ClaimRequest(claim=request.job_name, pointers=pointers)


# --- Reading pool pods ------------------------------------------------------------------------------------


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    for candidate in (pod.get("status") or {}).get("containerStatuses") or []:
        if candidate.get("name") == "worker":
            return dict(candidate)
    return {}


def warm_job_view(pod: dict[str, Any]) -> JobView | None:
    """A claimed pod as the planner sees a Job: named after the turn, finished when the pod is.

    ``None`` for a pod that is not a claimed worker pod.
    """
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(claim.LABEL_POOL) != claim.POOL_CLAIMED or not annotations.get(claim.ANNOTATION_JOB):
        return None
    try:
        turn = int(labels[constants.LABEL_TURN])
        attempt = int(labels.get(f"{constants.LABEL_PREFIX}/attempt", "1"))
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    view = pod_view(pod)
    terminated = (_container(pod).get("state") or {}).get("terminated") or {}
    deleting = bool(metadata.get("deletionTimestamp"))
    complete = status.get("phase") == "Succeeded"
    failed_reason: str | None = None
    if status.get("phase") == "Failed":
        failed_reason = status.get("reason") or "PodFailed"
    elif deleting and terminated and not complete:
        failed_reason = status.get("reason") or "PodDeleted"
    finished = complete or failed_reason is not None
    return JobView(
        name=str(annotations[claim.ANNOTATION_JOB]),
        turn=turn,
        attempt=attempt,
        requested_ts=annotations.get(ANNOTATION_REQUESTED_TS),
        created_at=_parse_time(annotations.get(claim.ANNOTATION_CLAIMED_AT)),
        active=0 if finished else 1,
        complete=complete,
        failed_reason=failed_reason,
        finished_at=_parse_time(terminated.get("finishedAt")) if finished else None,
        deleting=deleting,
        pods=(view,),
    )


@dataclass(frozen=True)
class PoolPod:
    """What the pool manager needs to know of one pool pod."""

    name: str
    pool: str  # the peerbot.ai/pool label
    created_at: datetime
    known: bool = True  # this operator holds its claim token
    phase: str | None = None
    ready: bool = False
    ip: str | None = None
    deleting: bool = False
    waiting_reason: str | None = None
    finished_at: datetime | None = None
    job: str | None = None  # a claimed pod's turn

    @property
    def exited(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def claimable(self) -> bool:
        return (
            self.pool == claim.POOL_IDLE
            and self.known
            and self.ready
            and bool(self.ip)
            and self.phase == "Running"
            and not self.deleting
        )


def pool_pod(pod: dict[str, Any], known: bool, now: datetime) -> PoolPod:
    """A pool pod from its API object (or kopf's snapshot of metadata and status)."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    container = _container(pod)
    state = container.get("state") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return PoolPod(
        name=str(metadata.get("name", "")),
        pool=str((metadata.get("labels") or {}).get(claim.LABEL_POOL, "")),
        created_at=_parse_time(metadata.get("creationTimestamp")) or now,
        known=known,
        phase=status.get("phase"),
        ready=ready,
        ip=status.get("podIP"),
        deleting=bool(metadata.get("deletionTimestamp")),
        waiting_reason=(state.get("waiting") or {}).get("reason"),
        finished_at=_parse_time((state.get("terminated") or {}).get("finishedAt")),
        job=(metadata.get("annotations") or {}).get(claim.ANNOTATION_JOB),
    )


# --- The pool's plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """What to do: create pods, retire idle ones (conditionally), delete others; each with a reason."""

    create: int = 0
    retire: tuple[tuple[str, str], ...] = ()
    delete: tuple[tuple[str, str], ...] = ()
    #: Pods that can never start, with the reason (logged with what to fix; creations back off).
    broken: tuple[tuple[str, str], ...] = ()


def plan_pool(
    pods: list[PoolPod],
    now: datetime,
    settings: PoolSettings,
    target: int,
    *,
    finished_ttl: timedelta,
    can_create: bool = True,
) -> PoolPlan:
    """Decide what the pool does next. Pure: the same inputs always give the same plan.

    - idle pods this operator holds no token for, that exited, that can never start, or that stayed
      Pending too long go;
    - a pod idle longer than ``max_idle`` is due: retired once fresh Ready pods cover the target (make before
      break), or at :data:`HARD_IDLE_FACTOR` times the limit;
    - enough pods are created for fresh Ready plus starting ones to reach ``target``; a surplus of Ready
      ones is retired, oldest first;
    - claimed pods go ``finished_ttl`` after their turn ended (as the Job TTL does), failed hand-offs and
      left-over retiring pods at once.
    """
    retire: list[tuple[str, str]] = []
    delete: list[tuple[str, str]] = []
    broken: list[tuple[str, str]] = []
    fresh_ready: list[PoolPod] = []
    due: list[PoolPod] = []
    starting = 0
    for pod in sorted(pods, key=lambda p: (p.created_at, p.name)):
        if pod.deleting:
            continue
        if pod.pool == claim.POOL_CLAIMED:
            if pod.exited and pod.finished_at is not None and now - pod.finished_at >= finished_ttl:
                delete.append((pod.name, "finished"))
            continue
        if pod.pool in (claim.POOL_RETIRING, claim.POOL_FAILED):
            delete.append((pod.name, "retired" if pod.pool == claim.POOL_RETIRING else "handoff"))
            continue
        if pod.pool != claim.POOL_IDLE:
            continue
        age = now - pod.created_at
        if not pod.known:
            retire.append((pod.name, "unknown"))
        elif pod.exited:
            delete.append((pod.name, "exited"))
        elif pod.waiting_reason in NEVER_STARTS:
            delete.append((pod.name, "never_starts"))
            broken.append((pod.name, f"{NEVER_STARTS[pod.waiting_reason]} ({pod.waiting_reason})"))
        elif not pod.ready:
            if age > POD_START_TIMEOUT:
                retire.append((pod.name, "pending_too_long"))
            else:
                starting += 1
        elif age > settings.max_idle:
            due.append(pod)
        else:
            fresh_ready.append(pod)
    create = max(0, target - len(fresh_ready) - starting) if can_create and not broken else 0
    for pod in due:
        hard = now - pod.created_at > settings.max_idle * HARD_IDLE_FACTOR
        if hard or len(fresh_ready) >= target:
            retire.append((pod.name, "max_idle"))
    surplus = len(fresh_ready) + starting - target
    if surplus > 0:
        retire += [(pod.name, "surplus") for pod in fresh_ready[: min(surplus, len(fresh_ready))]]
    return PoolPlan(create=create, retire=tuple(retire), delete=tuple(delete), broken=tuple(broken))


@dataclass
class Demand:
    """Turn starts by minute, for the pool's target (see :data:`DEMAND_WINDOW`)."""

    settings: PoolSettings
    started_at: datetime
    _starts: deque[datetime] = field(default_factory=deque)

    def record(self, now: datetime) -> None:
        self._starts.append(now)
        self._forget(now)

    def _forget(self, now: datetime) -> None:
        while self._starts and now - self._starts[0] > DEMAND_WINDOW:
            self._starts.popleft()

    def peak_per_minute(self, now: datetime) -> int:
        """The most starts within any one minute of the window (a sliding minute, not clock minutes)."""
        self._forget(now)
        starts = list(self._starts)
        best, first = 0, 0
        for last, moment in enumerate(starts):
            while moment - starts[first] >= DEMAND_BUCKET:
                first += 1
            best = max(best, last - first + 1)
        return best

    def target(self, now: datetime) -> int:
        """The pool's size now: the peak minute, within ``min`` and ``max`` (at least ``size`` until a whole
        window of history exists; exactly ``size`` when ``min == max``)."""
        low, high = self.settings.low, self.settings.high
        if low >= high:
            return high
        wanted = self.peak_per_minute(now)
        if now - self.started_at < DEMAND_WINDOW:
            wanted = max(wanted, self.settings.size)
        return max(low, min(high, wanted))
