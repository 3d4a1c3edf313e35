"""Starting a turn: the seam between the planner's "start a turn" and how a worker comes to run it.

A turn gets a new Job (:class:`JobLauncher`), or, with the warm pool on, a pre-started idle pod claims it
(:class:`peerbot.operator.pool.WarmLauncher`, which falls back to a Job): the planner does not know which.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Protocol, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot.logs import get_logger
from peerbot.operator.jobs import JobSettings, build_worker_job
from peerbot.planner import TurnRequest

log = get_logger(__name__)


class Launch(Enum):
    """How a turn was started (``status.startedWarm``)."""

    COLD = "cold"  # a new Job (a pod start: seconds, or a minute when a node must be added)
    WARM = "warm"  # an idle pod of the warm pool claimed it


class TurnLauncher(Protocol):
    """Something that makes a worker run ``request``; starting the same turn twice must be a no-op."""

    async def start(self, request: TurnRequest, owner_uid: str, now: datetime) -> Launch | None:
        """Start the turn; how, when this call started it, ``None`` when it was already started."""
        ...

    async def stop(self, job_name: str) -> None:
        """Stop a turn's worker that is not a Job (the reconciler deletes Jobs itself); a no-op otherwise."""
        ...


class JobLauncher:
    """Runs each turn as a new ``batch/v1`` Job with a deterministic name."""

    def __init__(self, api: client.ApiClient, settings: JobSettings) -> None:
        self._batch = client.BatchV1Api(api)
        self._settings = settings

    async def start(self, request: TurnRequest, owner_uid: str, now: datetime) -> Launch | None:
        manifest = build_worker_job(request, self._settings, owner_uid, now)
        try:
            # The created Job is not needed back: reading the raw answer skips the generated client's
            # deserialisation into model objects, which costs more than the request under a burst.
            response: Any = await self._batch.create_namespaced_job(
                namespace=self._settings.namespace, body=cast(Any, manifest), _preload_content=False
            )
            body = await response.read()
            # Without _preload_content the client raises for no status: an error arrives as a response.
            if not 200 <= response.status < 300:
                error = ApiException(status=response.status, reason=response.reason)
                error.body = body.decode(errors="replace")
                raise error
        except ApiException as error:
            if error.status == 409:  # the same turn's Job exists: created before a restart
                log.info("job already exists", job=request.job_name, conversation=request.conversation)
                return None
            raise
        log.info("job created", job=request.job_name, conversation=request.conversation, turn=request.turn)
        return Launch.COLD

    async def stop(self, job_name: str) -> None:
        """A Job's worker is stopped by deleting the Job, which the reconciler does."""
