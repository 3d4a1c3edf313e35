"""The warm pool at work: :class:`WarmPool` keeps idle worker pods, :class:`WarmLauncher` claims one per turn.

``docs/warm-workers.md`` is the design; the decisions are pure functions in :mod:`peerbot.operator.warm`,
this module reads the world, asks them, and applies the answer:

- :class:`WarmPool` runs one asyncio task in the operator (started in kopf's startup, stopped in its
  cleanup). It reads the pool's pods from a kopf index (no list calls), keeps the claim token of every pod
  it created in memory only, and every few seconds (at once after a claim or a pool pod's event) applies
  :func:`~peerbot.operator.warm.plan_pool`: refill, recycle, clean up, follow demand.
- :meth:`WarmPool.claim` claims the oldest Ready idle pod with a conditional JSON patch, then hands it the
  turn's pointers over HTTP with the pod's token.
- :class:`WarmLauncher` is the :class:`~peerbot.operator.launcher.TurnLauncher` the reconciler uses: a claim,
  else the cold :class:`~peerbot.operator.launcher.JobLauncher` (same Job, same name as always).
- :class:`PoolMetrics`: ``peerbot_operator_pool_*`` (claims, fallbacks, claim latency, pool size).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from peerbot import claim, constants
from peerbot.logs import get_logger
from peerbot.operator.jobs import JobSettings
from peerbot.operator.launcher import JobLauncher, Launch, TurnLauncher
from peerbot.operator.warm import (
    Demand,
    PoolPlan,
    PoolPod,
    PoolSettings,
    build_idle_pod,
    claim_patch,
    claim_request,
    plan_pool,
    pool_pod,
    retire_patch,
    unclaim_patch,
    warm_job_view,
)
from peerbot.planner import JobView, TurnRequest
from peerbot.settings import OperatorSettings

log = get_logger(__name__)

PREFIX: Final = "peerbot_operator_pool"
#: The pool is looked at this often without any event (events and claims wake it at once).
POOL_INTERVAL_SECONDS: Final = 5.0
#: A claim tries at most this many idle pods before the turn falls back to a Job (each loser was claimed
#: by a racing turn a moment earlier; more attempts would only add latency).
MAX_CLAIM_ATTEMPTS: Final = 3
#: The hand-off is one small POST inside the cluster (milliseconds); a pod that does not answer within
#: these is not going to run the turn promptly: the turn goes cold instead.
HANDOFF_CONNECT_SECONDS: Final = 1.0
HANDOFF_TOTAL_SECONDS: Final = 2.0
HANDOFF_ATTEMPTS: Final = 2
#: Pods created at once by one round of the pool (API politeness; a big pool fills in a few rounds).
CREATE_CONCURRENCY: Final = 10
#: A pod this operator created but kopf's index has not shown yet is counted as starting for this long.
INDEX_GRACE: Final = timedelta(seconds=60)
#: Creations back off after a pod that can never start: 10 s, doubling, at most 5 minutes.
BACKOFF_FIRST: Final = timedelta(seconds=10)
BACKOFF_MAX: Final = timedelta(minutes=5)
#: Shutting down, the operator retires its idle pods (their tokens die with it) within this long.
SHUTDOWN_SECONDS: Final = 5.0
#: Claim latency: a claim is a patch and a POST inside the cluster, tens of milliseconds.
CLAIM_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.0, 5.0)
FALLBACK_REASONS: Final = ("empty", "contended", "handoff")
POD_STATES: Final = ("ready", "starting", "claimed")


class PoolMetrics:
    """The pool's Prometheus metrics (``peerbot_operator_pool_*``), in the operator's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.claims = Counter(f"{PREFIX}_claims", "Turns handed to an idle worker pod.", registry=registry)
        self.fallbacks = Counter(
            f"{PREFIX}_fallbacks",
            "Turns started as a Job although the pool is on, by reason (empty, contended, handoff).",
            ["reason"],
            registry=registry,
        )
        self.claim_seconds = Histogram(
            f"{PREFIX}_claim_seconds",
            "Seconds from starting a turn to the idle worker accepting it (claim patch and hand-off).",
            buckets=CLAIM_BUCKETS,
            registry=registry,
        )
        self.pods = Gauge(f"{PREFIX}_pods", "Pool pods by state.", ["state"], registry=registry)
        self.target = Gauge(
            f"{PREFIX}_target", "The number of idle pods the pool aims for.", registry=registry
        )
        self.recycled = Counter(
            f"{PREFIX}_recycled", "Pool pods removed, by reason.", ["reason"], registry=registry
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "The pool's failures to act, by kind (create_403...).",
            ["kind"],
            registry=registry,
        )
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)
        for state in POD_STATES:
            self.pods.labels(state=state).set(0)


class TokenBook:
    """The claim tokens of the pods this operator created, by pod name: in memory only, never written."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def issue(self) -> str:
        return claim.new_token()

    def keep(self, pod: str, token: str) -> None:
        self._tokens[pod] = token

    def get(self, pod: str) -> str | None:
        return self._tokens.get(pod)

    def forget(self, pod: str) -> str | None:
        return self._tokens.pop(pod, None)

    def __contains__(self, pod: object) -> bool:
        return pod in self._tokens

    def names(self) -> list[str]:
        return list(self._tokens)


@dataclass(frozen=True)
class ClaimOutcome:
    """What :meth:`WarmPool.claim` did: claimed ``pod``, found the turn already started, or why not."""

    pod: str | None = None
    already_started: bool = False
    fallback: str | None = None  # empty, contended, handoff
    seconds: float = 0.0


PodSource = Callable[[], Iterable[dict[str, Any]]]
#: (conversation, Job name) -> whether that Job exists.
JobLookup = Callable[[str, str], bool]


def index_jobs(index: Any) -> JobLookup:
    """Whether a Job exists, from kopf's ``worker_jobs`` index (Conversation name -> its Jobs' snapshots)."""

    def exists(conversation: str, job: str) -> bool:
        return any(
            (snapshot.get("metadata") or {}).get("name") == job for snapshot in index.get(conversation, [])
        )

    return exists


def index_source(index: Any) -> PodSource:
    """Pool pods from kopf's ``pool_pods`` index (pod name -> its snapshots)."""

    def pods() -> Iterable[dict[str, Any]]:
        for store in list(index.values()):
            yield from list(store)

    return pods


class WarmPool:
    """Keeps idle worker pods and claims them for turns (see the module docstring).

    Args:
        api: the operator's Kubernetes client.
        job_settings: what a cold Job would be (the idle pod is derived from it).
        settings: the pool's settings.
        pods: the pool's pods as the operator knows them (kopf's index, through :func:`index_source`).
        metrics: where to count (the operator's registry).
        finished_ttl: claimed pods are deleted this long after their turn ended (``JOB_TTL_SECONDS``).
        tokens: the claim tokens (a fresh book by default; tests share one between two pools).
        jobs: whether a Conversation has a Job of a given name, from the operator's in-memory index (without
            it, every claim asks the API).
    """

    def __init__(
        self,
        api: client.ApiClient,
        job_settings: JobSettings,
        settings: PoolSettings,
        pods: PodSource,
        metrics: PoolMetrics | None = None,
        *,
        finished_ttl: timedelta = timedelta(hours=1),
        tokens: TokenBook | None = None,
        jobs: JobLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.job_settings = job_settings
        self.settings = settings
        self.metrics = metrics or PoolMetrics()
        self.tokens = tokens if tokens is not None else TokenBook()
        self.finished_ttl = finished_ttl
        self._pods = pods
        self._jobs = jobs
        self._clock = clock
        # The generated client's stubs know neither plain-dict bodies nor _preload_content: used untyped.
        self._core: Any = client.CoreV1Api(api)
        self._batch: Any = client.BatchV1Api(api)
        self.demand = Demand(settings, started_at=clock())
        self._created: dict[str, datetime] = {}  # created by us, not yet seen in the index
        self._seen: set[str] = set()
        self._taken: set[str] = set()  # claimed or being claimed by this process
        self._claims: dict[str, str] = {}  # turn (job name) -> pod, for claims made by this process
        self._view_cache: dict[str, tuple[str, PoolPod]] = {}
        self._backoff_until: datetime | None = None
        self._backoff = BACKOFF_FIRST
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        self._round = asyncio.Lock()

    # --- life ---------------------------------------------------------------------------------------------

    async def start(self, *, keep: bool = True) -> None:
        """Open the hand-off client and (``keep``) start keeping the pool; without ``keep`` the pool only
        changes when :meth:`reconcile_once` is called (tests and benchmarks drive it step by step)."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HANDOFF_TOTAL_SECONDS, connect=HANDOFF_CONNECT_SECONDS)
        )
        if keep:
            self._task = asyncio.create_task(self._loop(), name="peerbot warm pool")
        log.info(
            "warm pool started",
            size=self.settings.size,
            min=self.settings.low,
            max=self.settings.high,
            max_idle_minutes=self.settings.max_idle.total_seconds() / 60,
        )

    async def stop(self, *, retire_idle: bool = True) -> None:
        """Stop the loop; retire the idle pods this operator created (their tokens die with it)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if retire_idle:
            idle = [p.name for p in self.views() if p.pool == claim.POOL_IDLE and p.known and not p.deleting]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_SECONDS):
                    await asyncio.gather(
                        *(self._retire(name, "shutdown") for name in idle), return_exceptions=True
                    )
        if self._http is not None:
            await self._http.close()
            self._http = None

    def wake(self) -> None:
        """Look at the pool now (a pool pod changed, a pod was claimed)."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._closed:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again; the pool must not die of one bad answer
                log.exception("warm pool round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POOL_INTERVAL_SECONDS):  # a schedule, not synchronisation
                    await self._wake.wait()
            self._wake.clear()

    # --- reading ------------------------------------------------------------------------------------------

    def _objects(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for pod in self._pods():
            name = str((pod.get("metadata") or {}).get("name", ""))
            if name:
                found[name] = pod
        return found

    def views(self) -> list[PoolPod]:
        """Every pool pod as the pool manager sees it, including ones just created and not yet indexed."""
        now = self._clock()
        objects = self._objects()
        for name in list(self._created):
            if name in objects:
                self._seen.add(name)
                del self._created[name]
        for name in list(self._seen):
            if name not in objects:  # a pod we created is gone from the cluster: its token goes too
                self._seen.discard(name)
                self.tokens.forget(name)
        for name in [*self._taken, *self._view_cache]:
            if name not in objects:
                self._taken.discard(name)
                self._view_cache.pop(name, None)
        for job, pod in list(self._claims.items()):
            if pod not in objects and pod not in self._created:
                del self._claims[job]
        views = [self._view(name, pod, now) for name, pod in objects.items()]
        for name, created in list(self._created.items()):
            if now - created > INDEX_GRACE:  # never showed up: it does not exist
                del self._created[name]
                self.tokens.forget(name)
                continue
            views.append(PoolPod(name=name, pool=claim.POOL_IDLE, created_at=created, phase="Pending"))
        return [
            view if view.name not in self._taken or view.pool != claim.POOL_IDLE else _as_claimed(view)
            for view in views
        ]

    def _view(self, name: str, pod: dict[str, Any], now: datetime) -> PoolPod:
        """``pool_pod``, remembered per resourceVersion (a claim reads every pool pod; most never change)."""
        known = name in self.tokens
        version = str((pod.get("metadata") or {}).get("resourceVersion", ""))
        cached = self._view_cache.get(name)
        if cached is not None and version and cached[0] == version and cached[1].known == known:
            return cached[1]
        view = pool_pod(pod, known, now)
        self._view_cache[name] = (version, view)
        return view

    def claimable(self) -> list[tuple[PoolPod, dict[str, Any]]]:
        """Idle pods a turn may claim now, oldest first (closest to being recycled)."""
        objects = self._objects()
        found = [
            (view, objects[view.name])
            for view in self.views()
            if view.claimable and view.name not in self._taken and view.name in objects
        ]
        return sorted(found, key=lambda item: (item[0].created_at, item[0].name))

    def claimed_pod(self, job_name: str) -> str | None:
        """The pod serving turn ``job_name``, if a pool pod does."""
        if job_name in self._claims:
            return self._claims[job_name]
        for name, pod in self._objects().items():
            metadata = pod.get("metadata") or {}
            if (metadata.get("labels") or {}).get(claim.LABEL_POOL) == claim.POOL_CLAIMED and (
                metadata.get("annotations") or {}
            ).get(claim.ANNOTATION_JOB) == job_name:
                return name
        return None

    # --- the pool -----------------------------------------------------------------------------------------

    async def reconcile_once(self) -> PoolPlan:
        """One round: look, plan, apply; returns the plan applied."""
        async with self._round:
            now = self._clock()
            target = self.demand.target(now)
            views = self.views()
            can_create = self._backoff_until is None or now >= self._backoff_until
            plan = plan_pool(
                views, now, self.settings, target, finished_ttl=self.finished_ttl, can_create=can_create
            )
            self._count(views, target)
            for name, why in plan.broken:
                log.warning(
                    "warm pool pod can never start: fix the worker's set-up; new pool pods back off",
                    pod=name,
                    reason=why,
                )
            if plan.broken:
                self._backoff_until = now + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            elif plan.create:
                self._backoff = BACKOFF_FIRST
            limit = asyncio.Semaphore(CREATE_CONCURRENCY)

            async def create() -> None:
                async with limit:
                    try:
                        await self._create()
                    except ApiException as error:  # refused (RBAC, quota, admission): back off, say why
                        self._backoff_until = self._clock() + self._backoff
                        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                        self.metrics.errors.labels(kind=f"create_{error.status}").inc()
                        log.error(
                            "could not create a warm pool pod: check the operator's Role (pods: create) "
                            "and the namespace's quota; turns start as Jobs meanwhile",
                            status=error.status,
                            reason=error.reason,
                        )

            await asyncio.gather(
                *(create() for _ in range(plan.create)),
                *(self._retire(name, why) for name, why in plan.retire),
                *(self._delete(name, why) for name, why in plan.delete),
            )
            return plan

    def _count(self, views: list[PoolPod], target: int) -> None:
        states = dict.fromkeys(POD_STATES, 0)
        for view in views:
            if view.deleting:
                continue
            if view.pool == claim.POOL_CLAIMED and not view.exited:
                states["claimed"] += 1
            elif view.pool == claim.POOL_IDLE and view.known and not view.exited:
                states["ready" if view.claimable else "starting"] += 1
        for state, count in states.items():
            self.metrics.pods.labels(state=state).set(count)
        self.metrics.target.set(target)

    async def _create(self) -> None:
        token = self.tokens.issue()
        body = build_idle_pod(self.job_settings, self.settings, claim.token_digest(token), self._clock())
        created = await _raw(
            self._core.create_namespaced_pod(self.job_settings.namespace, body, _preload_content=False)
        )
        name = str(created["metadata"]["name"])
        self.tokens.keep(name, token)
        self._created[name] = self._clock()
        log.info("warm pool pod created", pod=name)

    async def _retire(self, name: str, why: str) -> None:
        """Take an idle pod out of the pool (conditionally: a claimed one stays) and delete it."""
        try:
            await _raw(
                self._core.patch_namespaced_pod(
                    name,
                    self.job_settings.namespace,
                    retire_patch(),
                    _content_type="application/json-patch+json",
                    _preload_content=False,
                )
            )
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or claimed a moment ago: not ours to remove
                return
            raise
        await self._delete(name, why)

    async def _delete(self, name: str, why: str) -> None:
        self.tokens.forget(name)
        try:
            await _raw(
                self._core.delete_namespaced_pod(name, self.job_settings.namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status != 404:
                raise
        self.metrics.recycled.labels(reason=why).inc()
        log.info("warm pool pod removed", pod=name, reason=why)

    # --- claims -------------------------------------------------------------------------------------------

    async def claim(self, request: TurnRequest, owner_uid: str, now: datetime) -> ClaimOutcome:
        """Claim an idle pod for ``request`` and hand it the turn (see ``docs/warm-workers.md``).

        Whether the turn already has a Job (it started cold, and recording that failed) is read from the
        operator's index of Jobs when the pool has one (``jobs``), else asked of the API at the same time as
        the claim; in the rare case it has, the claimed pod is given up and the turn is left to the Job.
        """
        started = time.perf_counter()
        if self.claimed_pod(request.job_name) is not None:
            return ClaimOutcome(already_started=True)
        has_job: asyncio.Future[bool]
        if self._jobs is not None:
            has_job = asyncio.get_running_loop().create_future()
            has_job.set_result(self._jobs(request.conversation, request.job_name))
        else:
            has_job = asyncio.ensure_future(self._job_exists(request.job_name))
        try:
            return await self._claim(request, owner_uid, now, started, has_job)
        finally:
            if not has_job.done():
                has_job.cancel()
                with contextlib.suppress(asyncio.CancelledError, ApiException):
                    await has_job

    async def _claim(
        self,
        request: TurnRequest,
        owner_uid: str,
        now: datetime,
        started: float,
        has_job: asyncio.Future[bool],
    ) -> ClaimOutcome:
        candidates = self.claimable()
        if not candidates:
            if await has_job:
                return ClaimOutcome(already_started=True)
            self.demand.record(now)
            return await self._fall_back("empty", request, started)
        self.demand.record(now)
        for view, pod in candidates[:MAX_CLAIM_ATTEMPTS]:
            if view.name in self._taken:  # another turn of this operator took it while we awaited
                continue
            self._taken.add(view.name)
            try:
                await _raw(
                    self._core.patch_namespaced_pod(
                        view.name,
                        self.job_settings.namespace,
                        claim_patch(pod, request, self.job_settings, owner_uid, now),
                        _content_type="application/json-patch+json",
                        _preload_content=False,
                    )
                )
            except ApiException as error:
                if error.status in (404, 409, 422):  # lost the race (or the pod is gone): next one
                    log.info("warm pool claim lost", pod=view.name, status=error.status)
                    continue
                self._taken.discard(view.name)
                raise
            self._claims[request.job_name] = view.name
            token = self.tokens.forget(view.name)  # single use
            self.wake()  # refill
            if await has_job:  # started cold before: this pod must not run it too
                await self._undo(view.name, request)
                return ClaimOutcome(already_started=True)
            if token is not None and await self._hand_off(view, token, request, owner_uid, now):
                seconds = time.perf_counter() - started
                self.metrics.claims.inc()
                self.metrics.claim_seconds.observe(seconds)
                log.info(
                    "turn claimed a warm pod",
                    job=request.job_name,
                    pod=view.name,
                    conversation=request.conversation,
                    seconds=round(seconds, 4),
                )
                return ClaimOutcome(pod=view.name, seconds=seconds)
            await self._undo(view.name, request)
            return await self._fall_back("handoff", request, started)
        if await has_job:
            return ClaimOutcome(already_started=True)
        return await self._fall_back("contended", request, started)

    async def _fall_back(self, reason: str, request: TurnRequest, started: float) -> ClaimOutcome:
        """No warm pod for this turn: it becomes a Job, unless a pool pod already serves it (asked of the API
        itself, not a cache: a Job started next to a warm worker would run the turn twice)."""
        if await read_warm_turn(
            self._core, self.job_settings.namespace, request.conversation, request.job_name
        ):
            return ClaimOutcome(already_started=True)
        self.metrics.fallbacks.labels(reason=reason).inc()
        self.wake()
        return ClaimOutcome(fallback=reason, seconds=time.perf_counter() - started)

    async def _job_exists(self, name: str) -> bool:
        """Whether the turn already has a Job (started cold before): then it must not be claimed too."""
        try:
            await _raw(
                self._batch.read_namespaced_job(name, self.job_settings.namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _hand_off(
        self, view: PoolPod, token: str, request: TurnRequest, owner_uid: str, now: datetime
    ) -> bool:
        """POST the turn's pointers to the claimed pod; whether it accepted them."""
        assert self._http is not None, "WarmPool.start() opens the hand-off client"
        host = f"[{view.ip}]" if view.ip and ":" in view.ip else view.ip
        url = f"http://{host}:{self.settings.port}{claim.CLAIM_PATH}"
        body = claim_request(request, self.job_settings, owner_uid, now).model_dump_json()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for attempt in range(1, HANDOFF_ATTEMPTS + 1):
            try:
                async with self._http.post(url, data=body, headers=headers) as response:
                    if response.status in (200, 202):
                        return True
                    detail = (await response.text())[:300]
                    log.error(
                        "warm pod refused the hand-off",
                        pod=view.name,
                        status=response.status,
                        detail=detail,
                        job=request.job_name,
                    )
                    if response.status < 500:
                        return False
            except (aiohttp.ClientError, TimeoutError) as error:
                log.warning(
                    "warm pod did not answer the hand-off",
                    pod=view.name,
                    attempt=attempt,
                    error=type(error).__name__,
                    job=request.job_name,
                )
        return False

    async def _undo(self, pod: str, request: TurnRequest) -> None:
        """A hand-off failed: the pod stops being the turn's, then goes; the turn falls back to a Job."""
        self._claims.pop(request.job_name, None)
        try:
            await _raw(
                self._core.patch_namespaced_pod(
                    pod,
                    self.job_settings.namespace,
                    unclaim_patch(request.job_name, request),
                    _content_type="application/json-patch+json",
                    _preload_content=False,
                )
            )
        except ApiException as error:
            if error.status not in (404, 422):
                raise
        await self._delete(pod, "handoff")

    async def stop_turn(self, job_name: str) -> None:
        """Stop the pod serving turn ``job_name`` (a cancel, or a turn that must be cut short)."""
        pod = self.claimed_pod(job_name)
        if pod is None:
            return
        try:
            await _raw(
                self._core.delete_namespaced_pod(pod, self.job_settings.namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status != 404:
                raise
        log.info("warm pod stopped", pod=pod, job=job_name)


async def _raw(call: Awaitable[Any]) -> dict[str, Any]:
    """The JSON of a Kubernetes call made with ``_preload_content=False`` (which skips deserialising into
    models, and also skips raising for error statuses): raises :class:`ApiException` for anything not 2xx."""
    response = await call
    try:
        data = await response.read()
    finally:
        response.release()
    if not 200 <= response.status < 300:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = data.decode(errors="replace")
        raise error
    parsed: dict[str, Any] = json.loads(data) if data else {}
    return parsed


def _as_claimed(view: PoolPod) -> PoolPod:
    """A pod this process has claimed (the index may not show it yet): no longer idle for the plan."""
    return replace(view, pool=claim.POOL_CLAIMED)


class WarmLauncher:
    """A claimed idle pod when there is one, else a Job (the :class:`TurnLauncher` the reconciler uses)."""

    def __init__(self, pool: WarmPool, cold: TurnLauncher) -> None:
        self.pool = pool
        self.cold = cold

    async def start(self, request: TurnRequest, owner_uid: str, now: datetime) -> Launch | None:
        outcome = await self.pool.claim(request, owner_uid, now)
        if outcome.already_started:
            return None
        if outcome.pod is not None:
            return Launch.WARM
        log.info("turn starts cold", job=request.job_name, reason=outcome.fallback)
        return await self.cold.start(request, owner_uid, now)

    async def stop(self, job_name: str) -> None:
        await self.pool.stop_turn(job_name)
        await self.cold.stop(job_name)


async def read_warm_turn(core: Any, namespace: str, conversation: str, job_name: str) -> list[JobView]:
    """The warm turn ``job_name`` of ``conversation`` read from the API (not kopf's index), if it exists."""
    listing = await _raw(
        core.list_namespaced_pod(
            namespace,
            label_selector=f"{constants.LABEL_CONVERSATION}={conversation},{claim.LABEL_POOL}={claim.POOL_CLAIMED}",
            _preload_content=False,
        )
    )
    views = []
    for pod in listing.get("items", []):
        view = warm_job_view(pod)
        if view is not None and view.name == job_name:
            views.append(view)
    return views


def pool_settings(config: OperatorSettings) -> PoolSettings:
    """The pool's settings from the operator's (``WORKER_POOL_*``, ``OPERATOR_POD_*``)."""
    return PoolSettings(
        size=config.worker_pool_size,
        min=config.worker_pool_min,
        max=config.worker_pool_max,
        max_idle=timedelta(minutes=config.worker_pool_max_idle_minutes),
        port=config.worker_pool_port,
        owner_name=config.operator_pod_name,
        owner_uid=config.operator_pod_uid,
    )


def warm_launcher(
    api: client.ApiClient,
    job_settings: JobSettings,
    config: OperatorSettings,
    pods: PodSource,
    registry: CollectorRegistry | None = None,
    jobs: JobLookup | None = None,
) -> tuple[TurnLauncher, WarmPool | None]:
    """The operator's launcher: a :class:`WarmLauncher` and its pool when the pool is on, else Jobs only."""
    cold = JobLauncher(api, job_settings)
    settings = pool_settings(config)
    if not settings.enabled:
        return cold, None
    pool = WarmPool(
        api,
        job_settings,
        settings,
        pods,
        PoolMetrics(registry),
        finished_ttl=timedelta(seconds=config.job_ttl_seconds),
        jobs=jobs,
    )
    return WarmLauncher(pool, cold), pool
