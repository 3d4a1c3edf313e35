"""Pure builders of the worker Job for one turn, and readers that turn Job and Pod objects into views.

``build_worker_job`` is a pure function from a :class:`~peerbot.planner.TurnRequest` and the settings to
a ``batch/v1`` Job manifest. What it guarantees (and ``tests/unit/test_job_spec.py`` checks):

- only pointers in the environment (Slack ids, message timestamps, repository): never message text;
- secrets only through ``secretKeyRef`` to the Secret the chart manages;
- no service account token, the restricted security context, a read-only root with writable volumes;
- ``activeDeadlineSeconds`` from ``SESSION_TIMEOUT_MINUTES``, ``backoffLimit: 0`` (the operator decides
  about retries), a TTL after it finishes, and an ownerReference to the Conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from peerbot import constants
from peerbot.naming import label_value
from peerbot.planner import JobView, PodView, TurnRequest
from peerbot.settings import OperatorSettings

#: The worker's non-root user; fixed so volume ownership (fsGroup) is predictable.
WORKER_UID = 10001
WORKSPACE_MOUNT = "/workspace"
#: Finished Jobs are kept an hour for `kubectl logs`, then garbage-collected.
DEFAULT_JOB_TTL_SECONDS = 3600
#: The workspace holds one shallow clone; the limit keeps a runaway build from filling the node.
DEFAULT_WORKSPACE_SIZE = "6Gi"
#: emptyDir volumes count against the container's ephemeral-storage limit: workspace + /tmp + logs.
DEFAULT_EPHEMERAL_STORAGE = "8Gi"
#: The secrets a worker needs, by environment name, and the key each has in the Secret.
WORKER_SECRET_KEYS = {
    "SLACK_BOT_TOKEN": "slack-bot-token",
    "ANTHROPIC_API_KEY": "anthropic-api-key",
    "GITHUB_TOKEN": "github-token",
}
MANAGED_BY = "peerbot-operator"
ANNOTATION_REQUESTED_TS = f"{constants.LABEL_PREFIX}/requested-ts"
LABEL_ATTEMPT = f"{constants.LABEL_PREFIX}/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"


@dataclass(frozen=True)
class JobSettings:
    """What the Job builder needs from the operator's settings."""

    namespace: str
    image: str
    service_account: str
    secret_name: str
    cpu: str
    memory: str
    session_timeout_minutes: int
    #: A ConfigMap with the workers' non-secret settings (bucket, organization, model...), if any.
    config_map: str | None = None
    ttl_seconds: int = DEFAULT_JOB_TTL_SECONDS
    workspace_size: str = DEFAULT_WORKSPACE_SIZE
    image_pull_policy: str = "IfNotPresent"
    spot: bool = False


def job_settings_from(config: OperatorSettings, namespace: str) -> JobSettings:
    """The Job builder's settings from the operator's: the one place the two are mapped.

    The operator uses it, and so do the chart tests that build the Job a rendered chart would produce.
    """
    return JobSettings(
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


def job_labels(request: TurnRequest) -> dict[str, str]:
    """Labels on the Job and its pods: who and what it is for, as Slack ids."""
    return {
        "app.kubernetes.io/name": "peerbot",
        LABEL_COMPONENT: "worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        constants.LABEL_CONVERSATION: request.conversation,
        constants.LABEL_TEAM: label_value(request.spec.team),
        constants.LABEL_CHANNEL: label_value(request.spec.channel),
        constants.LABEL_USER: label_value(request.spec.user),
        constants.LABEL_TURN: str(request.turn),
        LABEL_ATTEMPT: str(request.attempt),
    }


def _pointer_env(request: TurnRequest, deadline: datetime, timeout_minutes: int) -> list[dict[str, Any]]:
    spec = request.spec
    pairs = {
        "PEERBOT_CONVERSATION": request.conversation,
        "PEERBOT_TURN": str(request.turn),
        "PEERBOT_TEAM": spec.team,
        "PEERBOT_CHANNEL": spec.channel,
        "PEERBOT_THREAD_TS": spec.thread_ts,
        "PEERBOT_USER": spec.user,
        "PEERBOT_REQUESTED_TS": spec.requested_ts,
        "PEERBOT_ANSWERED_TS": request.answered_ts or "",
        "PEERBOT_REPOSITORY": spec.repository or "",
        "PEERBOT_STATUS_MESSAGE_TS": spec.status_message_ts or "",
        "PEERBOT_DEADLINE": deadline.isoformat().replace("+00:00", "Z"),
        "SESSION_TIMEOUT_MINUTES": str(timeout_minutes),
    }
    return [{"name": name, "value": value} for name, value in pairs.items()]


def build_worker_job(
    request: TurnRequest,
    settings: JobSettings,
    owner_uid: str,
    now: datetime,
) -> dict[str, Any]:
    """The Job manifest that runs one turn. Pure: the same inputs give the same manifest."""
    timeout_seconds = settings.session_timeout_minutes * 60
    deadline = now + timedelta(seconds=timeout_seconds)
    labels = job_labels(request)
    env = _pointer_env(request, deadline, settings.session_timeout_minutes)
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": settings.secret_name, "key": key}}}
        for name, key in WORKER_SECRET_KEYS.items()
    ]
    env += [
        {"name": "HOME", "value": f"{WORKSPACE_MOUNT}/home"},
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108  (an emptyDir volume, not the node's /tmp)
        {"name": "SESSION_STORE", "value": "gcs"},
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["worker"],
        "env": env,
        "resources": {
            # Requests equal limits: GKE Autopilot sets them so anyway, and the turn gets what it asked for.
            "requests": {
                "cpu": settings.cpu,
                "memory": settings.memory,
                "ephemeral-storage": DEFAULT_EPHEMERAL_STORAGE,
            },
            "limits": {
                "cpu": settings.cpu,
                "memory": settings.memory,
                "ephemeral-storage": DEFAULT_EPHEMERAL_STORAGE,
            },
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": constants.DEFAULT_RESULT_FILE,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
    }
    if settings.config_map:
        container["envFrom"] = [{"configMapRef": {"name": settings.config_map}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "workspace", "emptyDir": {"sizeLimit": settings.workspace_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if settings.spot:
        pod_spec["nodeSelector"] = {"cloud.google.com/gke-spot": "true"}
        pod_spec["terminationGracePeriodSeconds"] = 25  # GKE gives Spot pods 30 s notice
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.job_name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_REQUESTED_TS: request.spec.requested_ts},
            "ownerReferences": [
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
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# --- Reading Jobs and Pods into the planner's views --------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def pod_view(pod: dict[str, Any]) -> PodView:
    """A worker pod, as the planner sees it."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    container: dict[str, Any] = {}
    for candidate in status.get("containerStatuses") or []:
        if candidate.get("name") == "worker":
            container = candidate
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return PodView(
        name=str(metadata.get("name", "")),
        phase=status.get("phase"),
        reason=status.get("reason"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated_reason=terminated.get("reason"),
        exit_code=terminated.get("exitCode"),
        termination_message=terminated.get("message"),
        disrupted=disrupted,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


def job_view(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobView | None:
    """A worker Job with its pods, as the planner sees it; ``None`` for a Job that is not a worker's."""
    metadata = job.get("metadata") or {}
    labels = metadata.get("labels") or {}
    try:
        turn = int(labels[constants.LABEL_TURN])
        attempt = int(labels.get(LABEL_ATTEMPT, "1"))
    except (KeyError, ValueError):
        return None
    status = job.get("status") or {}
    complete = False
    failed_reason = None
    finished_at = _parse_time(status.get("completionTime"))
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True" or condition.get("type") not in ("Complete", "Failed"):
            continue
        if condition.get("type") == "Complete":
            complete = True
        else:
            failed_reason = condition.get("reason") or "Failed"
        finished_at = finished_at or _parse_time(condition.get("lastTransitionTime"))
    ordered = sorted(
        pods, key=lambda p: (str((p.get("metadata") or {}).get("creationTimestamp", "")), str(p))
    )
    pod_views = [pod_view(p) for p in ordered]
    return JobView(
        name=str(metadata.get("name", "")),
        turn=turn,
        attempt=attempt,
        requested_ts=(metadata.get("annotations") or {}).get(ANNOTATION_REQUESTED_TS),
        created_at=_parse_time(metadata.get("creationTimestamp")),
        active=int(status.get("active") or 0),
        complete=complete,
        failed_reason=failed_reason,
        finished_at=finished_at,
        deleting=bool(metadata.get("deletionTimestamp")),
        pods=tuple(pod_views),
    )
