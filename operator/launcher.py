"""Starting a turn: the seam between the planner's "start a turn" and how a worker comes to run it.

Today a turn always gets a new Job (:class:`JobLauncher`). The warm-worker pool lets a pre-started pod
claim a turn instead; it plugs in here as another :class:`TurnLauncher` without the planner knowing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot.logs import get_logger
from peerbot.operator.jobs import JobSettings, build_worker_job
from peerbot.planner import TurnRequest

log = get_logger(__name__)


class TurnLauncher(Protocol):
    """Something that makes a worker run ``request``; starting the same turn twice must be a no-op."""

    async def start(self, request: TurnRequest, owner_uid: str, now: datetime) -> bool:
        """Start the turn; ``True`` when this call started it, ``False`` when it was already started."""
        ...


class JobLauncher:
    """Runs each turn as a new ``batch/v1`` Job with a deterministic name."""

    def __init__(self, api: client.ApiClient, settings: JobSettings) -> None:
        self._batch = client.BatchV1Api(api)
        self._settings = settings

    async def start(self, request: TurnRequest, owner_uid: str, now: datetime) -> bool:
        manifest = build_worker_job(request, self._settings, owner_uid, now)
        try:
            await self._batch.create_namespaced_job(
                namespace=self._settings.namespace, body=cast(Any, manifest)
            )
        except ApiException as error:
            if error.status == 409:  # the same turn's Job exists: created before a restart
                log.info("job already exists", job=request.job_name, conversation=request.conversation)
                return False
            raise
        log.info("job created", job=request.job_name, conversation=request.conversation, turn=request.turn)
        return True
