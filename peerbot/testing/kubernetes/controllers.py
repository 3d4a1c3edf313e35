"""What the Job controller and the kubelet would do, on request: tests drive a Job through its life.

Nothing runs in the stand-in on its own. A test (or the offline demo) that wants a worker Job to run calls
:func:`start_job` (the Job controller creates the pod from the template, the kubelet starts it) and then
:func:`finish_job` or :func:`time_out_job`. Every write goes through the emulator's own API machinery, so
the pod passes the same admission and validation a real cluster applies (a pod template that names a
missing ServiceAccount fails here as it would in the cluster).

Status fields follow Kubernetes 1.32: the Job gets ``SuccessCriteriaMet`` then ``Complete`` (or
``FailureTarget`` then ``Failed``); the pod's container gets ``state.terminated`` with the termination
message, as the kubelet copies it from ``terminationMessagePath``.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from peerbot.testing.kubernetes import errors, patches, timefmt

if TYPE_CHECKING:
    from peerbot.testing.kubernetes.emulator import StrictKubernetesEmulator

#: The Job conditions' reasons and messages (pkg/controller/job).
COMPLETIONS_REACHED: Final = ("CompletionsReached", "Reached expected number of succeeded pods")
BACKOFF_LIMIT_EXCEEDED: Final = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
DEADLINE_EXCEEDED: Final = ("DeadlineExceeded", "Job was active longer than specified deadline")
#: The exit code of a container stopped by SIGTERM when its Job's deadline passes.
SIGTERM_EXIT_CODE: Final = 143
#: The node every pod of the stand-in "runs" on.
NODE_NAME: Final = "standin-node"


class JobPodRejected(RuntimeError):
    """The Job's pod template is one the API server refuses, so the Job controller could never run it."""


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _job(emulator: StrictKubernetesEmulator, namespace: str, name: str) -> dict[str, Any]:
    jobs = emulator.registry.find("jobs")
    job = emulator.stored(jobs, namespace, name)
    if job is None:
        raise LookupError(
            f"Job {namespace}/{name} does not exist: create it (the operator should) before running it"
        )
    return copy.deepcopy(job)


def _finished(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in {"Complete", "Failed"} and c.get("status") == "True" for c in conditions)


def job_pods(emulator: StrictKubernetesEmulator, namespace: str, name: str) -> list[dict[str, Any]]:
    """The pods a Job owns (by ownerReference), oldest first."""
    job = _job(emulator, namespace, name)
    uid = _meta(job).get("uid")
    pods = emulator.registry.find("pods")
    owned = [
        copy.deepcopy(pod)
        for pod in emulator.iter_stored(pods, namespace)
        if any(ref.get("uid") == uid for ref in _meta(pod).get("ownerReferences") or [])
    ]
    return sorted(
        owned,
        key=lambda pod: (_meta(pod).get("creationTimestamp", ""), int(_meta(pod).get("resourceVersion", 0))),
    )


def _patch_status(
    emulator: StrictKubernetesEmulator, resource_name: str, obj: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[str, Any]:
    resource = emulator.registry.find(resource_name)
    meta = _meta(obj)
    body = json.dumps({"status": status}).encode()
    patched, _, _ = emulator.patch_object(
        resource, meta.get("namespace"), meta["name"], body, patches.MERGE_PATCH, {}, "status"
    )
    return patched


def _condition(kind: str, reason: str, message: str, when: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": when,
        "lastTransitionTime": when,
    }


def start_job(emulator: StrictKubernetesEmulator, namespace: str, name: str) -> dict[str, Any]:
    """Create the Job's pod from its template and mark it Running (returns the pod; idempotent)."""
    job = _job(emulator, namespace, name)
    if _finished(job):
        raise RuntimeError(f"Job {namespace}/{name} has already finished; a finished Job starts no pods")
    active = [
        pod
        for pod in job_pods(emulator, namespace, name)
        if (pod.get("status") or {}).get("phase") in {"Pending", "Running"}
    ]
    if active and (active[-1].get("status") or {}).get("phase") == "Running":
        return active[-1]
    if active:
        pod = active[-1]
    else:
        template = (job.get("spec") or {}).get("template") or {}
        template_meta = template.get("metadata") or {}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{name}-",
                "labels": copy.deepcopy(template_meta.get("labels") or {}),
                "annotations": copy.deepcopy(template_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": _meta(job)["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": dict(copy.deepcopy(template.get("spec") or {}), nodeName=NODE_NAME),
        }
        if not body["metadata"]["annotations"]:
            del body["metadata"]["annotations"]
        try:
            pod, _ = emulator.create_object(emulator.registry.find("pods"), namespace, body, {})
        except errors.ApiError as e:
            raise JobPodRejected(
                f"The Job controller could not create a pod for Job {namespace}/{name}: {e.message}. "
                "Fix the Job's pod template."
            ) from e
    started = timefmt.rfc3339(emulator.now())
    containers = (pod.get("spec") or {}).get("containers") or []
    status = {
        "phase": "Running",
        "hostIP": "10.0.0.1",
        "podIP": f"10.244.0.{secrets.randbelow(250) + 2}",
        "startTime": started,
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": started}
            for kind in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ],
        "containerStatuses": [
            {
                "name": container.get("name"),
                "image": container.get("image"),
                "imageID": f"{container.get('image')}@sha256:{secrets.token_hex(32)}",
                "containerID": f"containerd://{secrets.token_hex(32)}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }
            for container in containers
        ],
    }
    pod = _patch_status(emulator, "pods", pod, status)
    job_status = dict(job.get("status") or {})
    job_status.setdefault("startTime", started)
    job_status.update({"active": 1, "ready": 1, "terminating": 0, "uncountedTerminatedPods": {}})
    _patch_status(emulator, "jobs", job, job_status)
    return pod


def _terminate_pod(
    emulator: StrictKubernetesEmulator,
    pod: Mapping[str, Any],
    *,
    succeeded: bool,
    exit_code: int,
    reason: str,
    termination_message: str | None,
) -> dict[str, Any]:
    finished = timefmt.rfc3339(emulator.now())
    statuses = []
    for index, current in enumerate((pod.get("status") or {}).get("containerStatuses") or []):
        started = ((current.get("state") or {}).get("running") or {}).get("startedAt", finished)
        terminated: dict[str, Any] = {
            "exitCode": exit_code if index == 0 else 0,
            "reason": reason if index == 0 else "Completed",
            "startedAt": started,
            "finishedAt": finished,
            "containerID": current.get("containerID"),
        }
        if index == 0 and termination_message is not None:
            terminated["message"] = termination_message
        statuses.append(dict(current, ready=False, started=False, state={"terminated": terminated}))
    conditions = [
        {
            "type": kind,
            "status": "False"
            if kind in {"Ready", "ContainersReady", "PodReadyToStartContainers"}
            else "True",
            "lastProbeTime": None,
            "lastTransitionTime": finished,
            **({"reason": "PodCompleted"} if kind in {"Ready", "ContainersReady"} else {}),
        }
        for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    status = {
        "phase": "Succeeded" if succeeded else "Failed",
        "conditions": conditions,
        "containerStatuses": statuses,
    }
    return _patch_status(emulator, "pods", pod, status)


def finish_job(
    emulator: StrictKubernetesEmulator,
    namespace: str,
    name: str,
    *,
    succeeded: bool = True,
    termination_message: str | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Terminate the Job's pod (starting it first if needed) and complete or fail the Job for good.

    ``termination_message`` is what the worker wrote to its termination-message file; it appears in the
    pod's ``status.containerStatuses[0].state.terminated.message``. A failure is final (the helper does not
    play the retries of ``backoffLimit``): the Job gets ``FailureTarget`` and ``Failed`` with
    ``BackoffLimitExceeded``. Returns the Job.
    """
    pod = start_job(emulator, namespace, name)
    code = exit_code if exit_code is not None else 0 if succeeded else 1
    _terminate_pod(
        emulator,
        pod,
        succeeded=succeeded,
        exit_code=code,
        reason=reason or ("Completed" if succeeded else "Error"),
        termination_message=termination_message,
    )
    return _conclude(
        emulator,
        namespace,
        name,
        succeeded=succeeded,
        why=COMPLETIONS_REACHED if succeeded else BACKOFF_LIMIT_EXCEEDED,
    )


def time_out_job(
    emulator: StrictKubernetesEmulator, namespace: str, name: str, *, termination_message: str | None = None
) -> dict[str, Any]:
    """The Job's ``activeDeadlineSeconds`` passed: its pod is stopped and deleted, the Job fails.

    As in a real cluster, the Job controller deletes the running pod, so its termination message is gone
    with it: an operator cannot read the outcome of a timed-out worker from the pod. Returns the Job.
    """
    pod = start_job(emulator, namespace, name)
    stopped = _terminate_pod(
        emulator,
        pod,
        succeeded=False,
        exit_code=SIGTERM_EXIT_CODE,
        reason="Error",
        termination_message=termination_message,
    )
    pods = emulator.registry.find("pods")
    current = emulator.stored(pods, namespace, _meta(stopped)["name"])
    if current is not None:
        emulator.delete_object(
            pods, namespace, _meta(stopped)["name"], {"propagationPolicy": "Background"}, None
        )
    return _conclude(emulator, namespace, name, succeeded=False, why=DEADLINE_EXCEEDED)


def _conclude(
    emulator: StrictKubernetesEmulator, namespace: str, name: str, *, succeeded: bool, why: tuple[str, str]
) -> dict[str, Any]:
    job = _job(emulator, namespace, name)
    when = timefmt.rfc3339(emulator.now())
    status = dict(job.get("status") or {})
    status.update({"active": 0, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}})
    if succeeded:
        status["succeeded"] = int(status.get("succeeded", 0)) + 1
        status["completionTime"] = when
        kinds = ("SuccessCriteriaMet", "Complete")
    else:
        status["failed"] = int(status.get("failed", 0)) + 1
        kinds = ("FailureTarget", "Failed")
    status["conditions"] = [_condition(kind, why[0], why[1], when) for kind in kinds]
    return _patch_status(emulator, "jobs", job, status)
