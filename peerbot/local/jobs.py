"""The local runner's "Jobs": one record per turn, and how a record looks to the planner.

A worker Job in a cluster is an API object the Job controller and the kubelet keep up to date; on one
machine the runner keeps a small JSON record per turn instead (``jobs/<job name>.json``) and runs the
worker as a local process. Everything here is pure, so the mapping the planner depends on is tested
without any process:

- :func:`job_view` turns a record into the planner's :class:`~peerbot.planner.JobView`, as the operator's
  reader turns a Job and its pod: exit 0 is ``Complete``; any other exit is ``Failed``, with the worker's
  result document as the pod's termination message; the runner's kill at the deadline is
  ``DeadlineExceeded``; a process that vanished while nobody watched (the machine rebooted, the runner
  was killed with its workers) is a lost pod, which the planner retries once.
- :func:`worker_environment` builds the worker's environment from the same pointers the operator puts in
  a Job (:func:`~peerbot.operator.jobs.build_worker_job`), plus what only one machine needs: the session
  folder, the workspace and the result file of this turn, and (without ``GITHUB_TOKEN``) the local
  repository host and its folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from peerbot.conversation import ConversationSpec
from peerbot.local.settings import local_repositories
from peerbot.operator.jobs import JobSettings, build_worker_job
from peerbot.planner import JobView, PodView, TurnRequest
from peerbot.result import ExitCode, Outcome, TurnResult

#: The Job condition reason Kubernetes gives a Job stopped at ``activeDeadlineSeconds``.
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
#: The Job condition reason of a Job whose (only) pod failed (``backoffLimit: 0``).
BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
#: The pod reason the planner reads as "taken away, not failed": retried once.
NODE_LOST: Final = "NodeLost"
#: A process killed by a signal reports 128 + the signal number, as a container's exit code does.
SIGNAL_EXIT_BASE: Final = 128
#: Variables the worker must not inherit from ``peerbot local``'s own environment: the app-level token and
#: signing secret are the dispatcher's (least privilege), and every pointer comes from the turn.
NOT_FOR_WORKERS: Final = frozenset({"SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "REDIS_URL"})
#: Placeholders for the Job fields that mean nothing outside a cluster (only the pointers are used).
_JOB_SETTINGS_DEFAULTS: Final[dict[str, Any]] = {
    "namespace": "local",
    "image": "local",
    "service_account": "local",
    "secret_name": "local",
    "cpu": "1",
    "memory": "1Gi",
}


class JobState(StrEnum):
    """Where a local Job stands."""

    RUNNING = "running"  # a worker process runs it (or ran it when the runner last looked)
    INTERRUPTED = "interrupted"  # stopped with ``peerbot local``; started again when it starts again
    DELETING = "deleting"  # cancelled: the process is being stopped, then the record goes
    FINISHED = "finished"  # the process ended; ``exit_code``/``reason``/``result`` say how


class JobRecord(BaseModel):
    """One turn of one Conversation, as the local runner keeps it (``jobs/<name>.json``)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    conversation: str
    turn: int
    attempt: int = 1
    #: The newest message the turn was started for (the Job's requested-ts annotation in a cluster).
    requested_ts: str
    #: The turn's pointers: the Conversation's spec when it started, and the newest message answered then.
    spec: dict[str, Any]
    answered_ts: str | None = None
    created_at: datetime
    state: JobState = JobState.RUNNING
    #: How many times a worker process was started for it (1, then +1 after each ``peerbot local`` restart).
    runs: int = 0
    pid: int | None = None
    started_at: datetime | None = None
    deadline: datetime | None = None
    finished_at: datetime | None = None
    #: The process's exit code (128 + signal when a signal ended it); ``None`` when nobody saw it end.
    exit_code: int | None = None
    #: Why it ended other than by itself: ``DeadlineExceeded``, or ``NodeLost`` when it vanished unseen.
    reason: str | None = None
    #: The worker's result document (:class:`~peerbot.result.TurnResult`), as a termination message.
    result: str | None = None

    @classmethod
    def for_request(cls, request: TurnRequest, now: datetime) -> JobRecord:
        """The record of a turn the planner asked to start."""
        return cls(
            name=request.job_name,
            conversation=request.conversation,
            turn=request.turn,
            attempt=request.attempt,
            requested_ts=request.spec.requested_ts,
            spec=request.spec.to_api(),
            answered_ts=request.answered_ts,
            created_at=now,
        )

    def request(self, current_spec: Mapping[str, Any] | None = None) -> TurnRequest:
        """The turn's pointers, to start (or start again) its worker.

        ``current_spec`` is the Conversation's spec now: when it still asks for the same message, its
        status message is taken from it (the dispatcher may have posted that after the turn started).
        """
        spec = ConversationSpec.model_validate(self.spec)
        if current_spec and current_spec.get("requestedTs") == self.requested_ts:
            status_ts = current_spec.get("statusMessageTs")
            if status_ts:
                spec = spec.model_copy(update={"status_message_ts": status_ts})
        return TurnRequest(
            conversation=self.conversation,
            turn=self.turn,
            attempt=self.attempt,
            job_name=self.name,
            spec=spec,
            answered_ts=self.answered_ts,
        )

    @property
    def active(self) -> bool:
        """A process runs (or is to run again) for it."""
        return self.state in (JobState.RUNNING, JobState.INTERRUPTED)


def exit_code_of(returncode: int) -> int:
    """A ``subprocess`` return code as a container reports it (``-15`` becomes 143)."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def exit_code_for(result: TurnResult) -> int:
    """The exit code a worker uses for a result (for a process whose own exit nobody saw)."""
    return int(
        {Outcome.DONE: ExitCode.DONE, Outcome.PAUSED: ExitCode.PAUSED}.get(result.outcome, ExitCode.FAILED)
    )


def job_view(record: JobRecord) -> JobView:
    """The record as the planner sees a Job and its pod (see the module docstring)."""
    pod_name = f"{record.name}-run{max(record.runs, 1)}"
    base: dict[str, Any] = {
        "name": record.name,
        "turn": record.turn,
        "attempt": record.attempt,
        "requested_ts": record.requested_ts,
        "created_at": record.created_at,
    }
    if record.state in (JobState.RUNNING, JobState.INTERRUPTED):
        return JobView(**base, active=1, pods=(PodView(pod_name, phase="Running"),))
    if record.state == JobState.DELETING:
        return JobView(**base, deleting=True, pods=(PodView(pod_name, phase="Running", deleting=True),))
    if record.reason == NODE_LOST:
        pod = PodView(pod_name, phase="Failed", reason=NODE_LOST, termination_message=record.result)
        return JobView(
            **base, failed_reason=BACKOFF_LIMIT_EXCEEDED, finished_at=record.finished_at, pods=(pod,)
        )
    if record.reason == DEADLINE_EXCEEDED:
        pod = PodView(
            pod_name,
            phase="Failed",
            reason=DEADLINE_EXCEEDED,
            terminated_reason="Error",
            exit_code=record.exit_code,
            termination_message=record.result,
        )
        return JobView(**base, failed_reason=DEADLINE_EXCEEDED, finished_at=record.finished_at, pods=(pod,))
    if record.exit_code == 0:
        pod = PodView(
            pod_name,
            phase="Succeeded",
            terminated_reason="Completed",
            exit_code=0,
            termination_message=record.result,
        )
        return JobView(**base, complete=True, finished_at=record.finished_at, pods=(pod,))
    pod = PodView(
        pod_name,
        phase="Failed",
        terminated_reason="Error",
        exit_code=record.exit_code,
        termination_message=record.result,
    )
    return JobView(**base, failed_reason=BACKOFF_LIMIT_EXCEEDED, finished_at=record.finished_at, pods=(pod,))


def worker_environment(
    request: TurnRequest,
    *,
    base: Mapping[str, str],
    now: datetime,
    deadline: datetime,
    timeout_minutes: int,
    session_dir: Path,
    workspace: Path,
    result_file: Path,
    repositories_dir: Path,
) -> dict[str, str]:
    """The environment of one worker process (see the module docstring).

    ``base`` is ``peerbot local``'s own environment (its settings and tokens, from the environment or
    ``.env``); anything ``PEERBOT_*`` in it is replaced by this turn's pointers. ``HOME`` and ``TMPDIR``
    point into the turn's workspace, as in a pod, so the agent's commands never see the person's own
    dotfiles and credentials by default, and everything a turn writes goes when its workspace does.
    Without ``GITHUB_TOKEN`` (and no ``REPOSITORY_HOST`` chosen) the worker keeps repositories in local
    git: ``REPOSITORY_HOST=local`` and ``REPOSITORIES_DIR=repositories_dir``.
    """
    settings = JobSettings(**_JOB_SETTINGS_DEFAULTS, session_timeout_minutes=timeout_minutes)
    manifest = build_worker_job(request, settings, owner_uid="", now=now)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    pointers = {
        entry["name"]: entry["value"]
        for entry in container["env"]
        if "value" in entry
        and (entry["name"].startswith("PEERBOT_") or entry["name"] == "SESSION_TIMEOUT_MINUTES")
    }
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith("PEERBOT_") and name not in NOT_FOR_WORKERS
    }
    env.update(pointers)
    env.update(
        {
            # The runner's own deadline: the same limit, counted from this run of the turn.
            "PEERBOT_DEADLINE": deadline.isoformat().replace("+00:00", "Z"),
            "PEERBOT_RESULT_FILE": str(result_file),
            "SESSION_STORE": "local",
            "SESSION_DIR": str(session_dir),
            "WORKSPACE_DIR": str(workspace),
            "HOME": str(workspace / "home"),
            "TMPDIR": str(workspace / "tmp"),
        }
    )
    if local_repositories(base):
        env.update({"REPOSITORY_HOST": "local", "REPOSITORIES_DIR": str(repositories_dir)})
    env["LOG_FORMAT"] = "json"  # the worker's log goes to a file: one JSON object a line
    return env
