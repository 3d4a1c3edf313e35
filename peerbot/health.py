"""Health endpoints and self-checks, the same shape in every part (the playbook's health-check example).

- ``/health`` (liveness): 200 while the process serves, with the service, its version and uptime. It never
  looks at dependencies: a Slack outage must not make Kubernetes restart a healthy pod.
- ``/ready`` (readiness): each dependency's state (``ok``, or what is wrong and what to do), the circuit
  breakers, and the maintenance switch; 200 when every check is ``ok``, 503 otherwise, with the same body.
- ``/metrics``: Prometheus, behind ``METRICS_AUTH_TOKEN`` when set (:func:`peerbot.metrics.metrics_handler`).

:class:`HealthServer` serves the three on one port for the operator (the dispatcher adds the same routes
to its own server). :func:`worker_self_check` is what a worker checks before it starts a turn.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Self

from aiohttp import web

from peerbot import __version__
from peerbot.logs import get_logger
from peerbot.metrics import metrics_handler

log = get_logger(__name__)

OK: Final = "ok"
#: aiohttp waits this long for requests in flight when the server stops.
SHUTDOWN_GRACE_SECONDS: Final = 2.0

ReadinessCheck = Callable[[], Awaitable[Mapping[str, str]]]


class Uptime:
    """When a process started: its uptime for the health endpoints."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.started_at = time.time()

    @property
    def seconds(self) -> float:
        return round(self.clock() - self.started, 3)


def health_body(service: str, uptime: Uptime) -> dict[str, Any]:
    """The body of ``/health``."""
    return {"status": OK, "service": service, "version": __version__, "uptime_seconds": uptime.seconds}


def ready_body(
    service: str, uptime: Uptime, checks: Mapping[str, str], *, maintenance: bool = False
) -> tuple[dict[str, Any], bool]:
    """The body of ``/ready`` and whether the part is ready (every check ``ok``)."""
    ready = all(value == OK for value in checks.values())
    body = {
        "ready": ready,
        "status": OK if ready else "degraded",
        "service": service,
        "version": __version__,
        "uptime_seconds": uptime.seconds,
        "maintenance": maintenance,
        "checks": dict(checks),
    }
    return body, ready


class HealthServer:
    """``/health``, ``/ready`` and ``/metrics`` on one port (the operator's ``OPERATOR_PORT``).

    Args:
        service: the part's name, reported by the endpoints.
        readiness: returns each dependency's state (``ok`` or the problem).
        render_metrics: the Prometheus text for ``/metrics``.
        metrics_token: the bearer token ``/metrics`` needs (``None``: open).
        maintenance: whether the maintenance switch is on (reported, never a failure).
    """

    def __init__(
        self,
        service: str,
        *,
        readiness: ReadinessCheck,
        render_metrics: Callable[[], bytes],
        metrics_token: str | None = None,
        maintenance: bool = False,
    ) -> None:
        self.service = service
        self.readiness = readiness
        self.maintenance = maintenance
        self.uptime = Uptime()
        self.app = web.Application()
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/healthz", self._health)  # the path kopf's own liveness endpoint used
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", metrics_handler(render_metrics, metrics_token))
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the health server is not running: call start() first")
        return f"http://127.0.0.1:{self._port}"

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> Self:  # noqa: S104 (a pod's own port)
        """Serve on ``host:port`` (0: any free port); returns once listening."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port
        log.info("health endpoints serving", service=self.service, url=self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._port = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response(health_body(self.service, self.uptime))

    async def _ready(self, _request: web.Request) -> web.Response:
        try:
            checks = await self.readiness()
        except Exception as error:  # a check that crashes is a failed check, never a 500
            checks = {"readiness": f"the readiness check itself failed: {type(error).__name__}: {error}"}
        body, ready = ready_body(self.service, self.uptime, checks, maintenance=self.maintenance)
        return web.json_response(body, status=200 if ready else 503)


# --- the worker's start-up self-check -------------------------------------------------------------------


def _writable_folder(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".peerbot-check-"):
            pass
    except OSError as error:
        return f"{path} is not writable ({error.strerror or error})"
    return None


def worker_self_check(
    *, workspace: Path, result_file: Path, environment: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a worker needs from its pod before it can run a turn, each ``ok`` or the problem and the fix.

    Only local checks (a few milliseconds): the dependencies are reached by the turn itself, which says
    what failed in the thread. A problem here is the pod's set-up (volumes, image), for an administrator.
    """
    environment = environment if environment is not None else os.environ
    checks: dict[str, str] = {}
    problem = _writable_folder(workspace)
    checks["workspace"] = (
        OK if problem is None else f"{problem}: the worker Job needs a writable volume at WORKSPACE_DIR"
    )
    result_dir = result_file.parent
    if result_file.exists():
        checks["result_file"] = OK if os.access(result_file, os.W_OK) else f"{result_file} is not writable"
    else:
        problem = _writable_folder(result_dir)
        checks["result_file"] = (
            OK if problem is None else f"{problem}: set PEERBOT_RESULT_FILE to a writable path"
        )
    checks["git"] = (
        OK
        if shutil.which("git", path=environment.get("PATH"))
        else "git is not installed in the worker image: rebuild it from Dockerfile.worker"
    )
    home = environment.get("HOME")
    if home:
        problem = _writable_folder(Path(home))
        checks["home"] = OK if problem is None else f"{problem}: HOME must lie on a writable volume"
    return checks


__all__ = ["OK", "HealthServer", "Uptime", "health_body", "ready_body", "worker_self_check"]
