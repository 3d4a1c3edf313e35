"""A kubelet for the warm pool in the Kubernetes stand-in: idle worker pods served in-process.

Nothing runs pods in :class:`~peerbot.testing.kubernetes.KubernetesStandIn`. :class:`IdlePodKubelet` plays
the kubelet for the warm pool's pods (``peerbot.ai/pool``), the way the tests and ``benchmarks/bench_warm.py``
need it::

    async with IdlePodKubelet(kubernetes, port=port, start_delay=0.1) as kubelet:
        ...  # the operator creates idle pods; a turn claims one
        run = await kubelet.wait_for_turn("conv-t1")
        assert run.exit_code == 0

For every idle pod it sees (a list, then a watch, with the real ``kubernetes_asyncio`` client), after
``start_delay`` (the pod start it stands in for: pulling, scheduling, a node being added), it:

1. reads the pod's claim-token digest from its spec, as the container would get it from its environment;
2. serves a real :class:`~peerbot.worker.idle.IdleWorker` on the event loop, bound to a loopback address of
   its own (``127.0.0.N``: every pod has its own IP, all on the pool's one port), and waits until it is
   ready, then checks ``GET /ready`` as the readiness probe would;
3. reports the pod ``Running`` and ``Ready`` with that address as ``status.podIP``, so the operator's claim
   and its HTTP hand-off go to the real worker code;
4. when the worker exits, reports the container terminated with its exit code and termination message
   (``Succeeded`` or ``Failed``), as a kubelet copies them from ``terminationMessagePath``;
5. stops the worker (as SIGTERM would) when the pod is deleted.

The claimed turn itself is a script (:data:`TurnScript`, by default: answer at once), so the pool, the claim
and the hand-off are exercised without running Claude. :class:`ScriptedJobKubelet` does the same for cold
worker Jobs (start delay, script, finish), for comparisons.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot import claim
from peerbot.result import Outcome, TurnResult
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.kubernetes.timefmt import rfc3339
from peerbot.testing.watching import ListWatch
from peerbot.worker.idle import IdleWorker
from peerbot.worker.pointers import TurnPointers

#: Worker Jobs, as ``operator/jobs.py`` labels them.
WORKER_JOBS: Final = "app.kubernetes.io/component=worker,app.kubernetes.io/managed-by=peerbot-operator"
#: Stopping, a running turn gets this long to end after it is cancelled.
STOP_GRACE_SECONDS: Final = 5.0
#: Pods get loopback addresses from 127.0.0.2 on (127.0.0.1 stays the host's).
FIRST_ADDRESS: Final = 2

#: A turn as a script: the pointers in, the exit code and the termination message out.
TurnScript = Callable[[TurnPointers], Awaitable[tuple[int, str | None]]]


async def answer_at_once(pointers: TurnPointers) -> tuple[int, str | None]:
    """The default turn: answered, at once."""
    result = TurnResult(outcome=Outcome.DONE, answeredTs=pointers.peerbot_requested_ts)
    return 0, result.to_document()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the pool's claim port for a test: the same on every address)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def loopback(index: int) -> str:
    """The ``index``-th loopback address from 127.0.0.2 (Linux answers on all of 127.0.0.0/8)."""
    number = FIRST_ADDRESS - 1 + index  # 1 is 127.0.0.2: the host keeps 127.0.0.1
    return f"127.0.{number // 253}.{number % 253 + 1}"


@dataclass
class PoolPodRun:
    """One pool pod served by the kubelet: when it started, what claimed it, how it ended."""

    pod: str
    address: str
    ready_at: float  # time.perf_counter()
    claim: str | None = None
    pointers: TurnPointers | None = None
    claimed_at: float | None = None
    exit_code: int | None = None
    termination_message: str | None = None
    finished: bool = False
    refused: dict[int, int] = field(default_factory=dict)


class _Kubelet:
    """What both kubelets share: the client, the watch, the tasks, waiting for a condition."""

    def __init__(self, kubernetes: KubernetesStandIn | Path, namespace: str, root: Path | None) -> None:
        #: The stand-in, or a kubeconfig for one (in another process, as an API server is another machine).
        self.kubernetes = kubernetes
        self.namespace = namespace
        self._root = root
        self._api: client.ApiClient | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self.failures: list[BaseException] = []

    async def _connect(self) -> client.ApiClient:
        import tempfile

        folder = self._root or Path(tempfile.mkdtemp(prefix="peerbot-warm-kubelet-"))
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(self.kubernetes, Path):
            kubeconfig = self.kubernetes
        else:
            kubeconfig = self.kubernetes.write_kubeconfig(folder / "kubelet.kubeconfig", self.namespace)
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig),
            client_configuration=configuration,
            persist_config=False,
            temp_file_path=str(folder),
        )
        self._api = client.ApiClient(configuration=configuration)
        return self._api

    async def _start_watch(self, watch: ListWatch) -> None:
        self._watch_task = asyncio.create_task(watch.run(), name=f"{type(self).__name__}-watch")
        listed = asyncio.create_task(watch.listed.wait())
        await asyncio.wait({self._watch_task, listed}, return_when=asyncio.FIRST_COMPLETED)
        listed.cancel()
        if self._watch_task.done():
            self._watch_task.result()

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # reported to whoever waits, never lost
                self.failures.append(error)
            finally:
                await self._notify()

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: bool(predicate()) or bool(self.failures))
        except TimeoutError:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s") from None
        if self.failures and not predicate():
            raise RuntimeError(f"the kubelet failed: {self.failures[0]!r}") from self.failures[0]
        return predicate()

    async def _stop_tasks(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
            self._watch_task = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def _status(self, name: str, status: Mapping[str, Any]) -> None:
        """Report a pod's status through the API, as a kubelet does (a merge patch of ``status``)."""
        assert self._api is not None
        core: Any = client.CoreV1Api(self._api)
        response = await core.patch_namespaced_pod_status(
            name,
            self.namespace,
            {"status": dict(status)},
            _content_type="application/merge-patch+json",
            _preload_content=False,  # a kubelet has no use for the pod it gets back
        )
        response.release()
        if response.status == 404:  # deleted meanwhile: no status to report
            return
        if response.status >= 300:
            raise ApiException(status=response.status, reason=response.reason)


def _container_identity(image: str, container_id: str) -> dict[str, Any]:
    """What a kubelet reports of the container it runs (the real clients require these fields)."""
    digest = hashlib.sha256(image.encode()).hexdigest()
    return {
        "name": "worker",
        "image": image,
        "imageID": f"{image}@sha256:{digest}",
        "containerID": container_id,
    }


def _running_status(address: str, started: str, image: str, container_id: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "hostIP": "10.0.0.1",
        "podIP": address,
        "podIPs": [{"ip": address}],
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
                **_container_identity(image, container_id),
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }
        ],
    }


def _terminated_status(
    code: int, message: str | None, started: str, finished: str, image: str, container_id: str
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "containerID": container_id,
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
    }
    if message is not None:
        terminated["message"] = message
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": finished,
            },
        ],
        "containerStatuses": [
            {
                **_container_identity(image, container_id),
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }


class IdlePodKubelet(_Kubelet):
    """Runs the warm pool's idle pods as in-process idle workers (see the module docstring).

    Args:
        kubernetes: a started stand-in, or a kubeconfig for one.
        port: the pool's claim port (``WORKER_POOL_PORT``); every pod listens on it at its own address.
        start_delay: seconds from a pod's creation to its container starting (the pod start it stands for).
        turn: what a claimed turn does.
        namespace: the namespace whose pool pods are run.
        root: a folder for the kubelet's kubeconfig (a temporary one by default).
    """

    def __init__(
        self,
        kubernetes: KubernetesStandIn | Path,
        *,
        port: int,
        start_delay: float = 0.0,
        turn: TurnScript = answer_at_once,
        namespace: str = "default",
        root: Path | None = None,
    ) -> None:
        super().__init__(kubernetes, namespace, root)
        self.port = port
        self.start_delay = start_delay
        self.turn = turn
        self.runs: dict[str, PoolPodRun] = {}
        self._seen: set[str] = set()
        self._workers: dict[str, IdleWorker] = {}
        self._addresses = itertools.count()
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> Self:
        api = await self._connect()
        self._http = aiohttp.ClientSession()
        core: Any = client.CoreV1Api(api)
        await self._start_watch(
            ListWatch(core.list_namespaced_pod, self.namespace, claim.LABEL_POOL, self._consider)
        )
        return self

    async def stop(self) -> None:
        for worker in list(self._workers.values()):
            worker.terminate()
        await self._stop_tasks()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- what tests wait for ------------------------------------------------------------------------------

    def ready_pods(self) -> list[str]:
        """Pods whose idle worker is ready and not claimed."""
        return sorted(name for name, run in self.runs.items() if run.claim is None and not run.finished)

    async def wait_for_ready(self, count: int, timeout: float = 10.0) -> list[str]:  # noqa: ASYNC109
        """Wait until at least ``count`` idle workers are ready and unclaimed."""
        return list(
            await self._wait(
                lambda: self.ready_pods() if len(self.ready_pods()) >= count else None,
                timeout,
                f"{count} ready idle pods (ready: {self.ready_pods()})",
            )
        )

    async def wait_for_turn(self, claim_name: str, timeout: float = 10.0) -> PoolPodRun:  # noqa: ASYNC109
        """Wait until the pod that claimed turn ``claim_name`` has finished it."""

        def done() -> PoolPodRun | None:
            return next((r for r in self.runs.values() if r.claim == claim_name and r.finished), None)

        run: PoolPodRun = await self._wait(done, timeout, f"the warm turn {claim_name} finishing")
        return run

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds (re-checked whenever a pool pod changes)."""
        return await self._wait(predicate, timeout, what)

    # --- the pods -----------------------------------------------------------------------------------------

    def _consider(self, kind: str, pod: dict[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        if kind == "DELETED" or metadata.get("deletionTimestamp"):
            worker = self._workers.get(name)
            if worker is not None:
                worker.terminate()  # as SIGTERM would
            self._spawn(self._notify(), f"notify:{name}")
            return
        labels = metadata.get("labels") or {}
        if name in self._seen or labels.get(claim.LABEL_POOL) != claim.POOL_IDLE:
            return
        if (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            return  # a pod another kubelet already runs (or ran)
        self._seen.add(name)
        self._spawn(self._run_pod(name, pod), f"idle-pod:{name}")

    async def _run_pod(self, name: str, pod: dict[str, Any]) -> None:
        await asyncio.sleep(self.start_delay)  # the pod start being stood in for, not synchronisation
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        digest = str(env.get(claim.ENV_TOKEN_DIGEST) or "")
        address = loopback(next(self._addresses))
        record: dict[str, PoolPodRun] = {}

        async def run_turn(pointers: TurnPointers) -> int:
            run = record["run"]
            run.claim, run.pointers, run.claimed_at = worker.claimed, pointers, time.perf_counter()
            await self._notify()
            code, message = await self.turn(pointers)
            run.termination_message = message
            return code

        worker = IdleWorker(
            token_digest=digest, run_turn=run_turn, host=address, port=self.port, idle_timeout=3600
        )
        self._workers[name] = worker
        started = rfc3339(_utcnow())
        image = str(pod["spec"]["containers"][0].get("image", ""))
        container_id = f"containerd://{secrets.token_hex(32)}"
        try:
            await worker.start()
            serving = asyncio.create_task(worker.serve(), name=f"idle-worker:{name}")
            ready = asyncio.create_task(worker.ready_event.wait())
            await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not serving.done():
                assert self._http is not None
                async with self._http.get(f"{worker.url}{claim.READY_PATH}") as probe:  # the readiness probe
                    probe.raise_for_status()
                record["run"] = PoolPodRun(pod=name, address=address, ready_at=time.perf_counter())
                await self._status(name, _running_status(address, started, image, container_id))
                self.runs[name] = record["run"]  # ready once the API server says so, as for the operator
                await self._notify()
            code = await serving
        finally:
            self._workers.pop(name, None)
            await worker.stop()
        run = self.runs.get(name)
        message = run.termination_message if run is not None else None
        finished = rfc3339(_utcnow())
        await self._status(name, _terminated_status(code, message, started, finished, image, container_id))
        if run is not None:  # finished once the API server says so
            run.exit_code = code
            run.refused = dict(worker.refused)
            run.finished = True


class ScriptedJobKubelet(_Kubelet):
    """Plays the Job controller and the kubelet for worker Jobs: after ``start_delay`` the Job's pod runs
    ``turn`` and finishes with its result (the cold path, for comparisons with the pool)."""

    def __init__(
        self,
        kubernetes: KubernetesStandIn,
        *,
        start_delay: float = 0.0,
        turn: TurnScript = answer_at_once,
        namespace: str = "default",
        root: Path | None = None,
    ) -> None:
        super().__init__(kubernetes, namespace, root)
        self.standin = kubernetes  # plays the Job controller, so it needs the stand-in itself
        self.start_delay = start_delay
        self.turn = turn
        self.started: dict[str, float] = {}
        self.finished: set[str] = set()
        self._seen: set[str] = set()

    async def start(self) -> Self:
        api = await self._connect()
        batch: Any = client.BatchV1Api(api)
        await self._start_watch(
            ListWatch(batch.list_namespaced_job, self.namespace, WORKER_JOBS, self._consider)
        )
        return self

    async def stop(self) -> None:
        await self._stop_tasks()

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_job(self, name: str, timeout: float = 10.0) -> float:  # noqa: ASYNC109
        """Wait until Job ``name`` has run; when its turn started (``time.perf_counter()``)."""
        started: float = await self._wait(
            lambda: self.started.get(name) if name in self.finished else None,
            timeout,
            f"the Job {name} running",
        )
        return started

    def _consider(self, kind: str, job: dict[str, Any]) -> None:
        metadata = job.get("metadata") or {}
        name = str(metadata.get("name", ""))
        if kind == "DELETED" or name in self._seen or metadata.get("deletionTimestamp"):
            return
        self._seen.add(name)
        self._spawn(self._run_job(name, job), f"job:{name}")

    async def _run_job(self, name: str, job: dict[str, Any]) -> None:
        await asyncio.sleep(self.start_delay)  # the pod start being stood in for, not synchronisation
        pod = await asyncio.to_thread(self.standin.start_job, self.namespace, name)
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
        from peerbot.worker.idle import pointers_from_claim

        pointers = pointers_from_claim(env)
        self.started[name] = time.perf_counter()
        code, message = await self.turn(pointers)
        await asyncio.to_thread(
            self.standin.finish_job,
            self.namespace,
            name,
            succeeded=code == 0,
            exit_code=code,
            termination_message=message,
        )
        self.finished.add(name)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ObjectCache:
    """Pods or Jobs with a label, kept in memory from a list and a watch, as kopf's indexes keep them for the
    operator: what a :class:`~peerbot.operator.pool.WarmPool` reads (``pods``, and ``jobs`` through
    :meth:`has_job`) without an API call, when it runs outside the operator (the benchmark)."""

    def __init__(
        self,
        kubernetes: KubernetesStandIn | Path,
        *,
        resource: str = "pods",
        selector: str = claim.LABEL_POOL,
        namespace: str = "default",
    ):
        if resource not in ("pods", "jobs"):
            raise ValueError(f"ObjectCache keeps pods or jobs, not {resource}")
        self._helper = _Kubelet(kubernetes, namespace, None)
        self._resource = resource
        self._selector = selector
        self.objects: dict[str, dict[str, Any]] = {}

    def __call__(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def has_job(self, conversation: str, name: str) -> bool:
        """A :data:`~peerbot.operator.pool.JobLookup` over the cached Jobs."""
        return name in self.objects

    def _consider(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        self._helper._spawn(self._helper._notify(), f"cache:{name}")

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds, re-checked whenever a cached object changes."""
        return await self._helper._wait(predicate, timeout, what)

    async def __aenter__(self) -> Self:
        api = await self._helper._connect()
        listing: Any = (
            client.CoreV1Api(api).list_namespaced_pod
            if self._resource == "pods"
            else client.BatchV1Api(api).list_namespaced_job
        )
        await self._helper._start_watch(
            ListWatch(listing, self._helper.namespace, self._selector, self._consider)
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._helper._stop_tasks()
