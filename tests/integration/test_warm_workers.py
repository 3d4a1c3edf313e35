"""The warm pool against the Kubernetes stand-in: real claims, real hand-offs, real idle workers.

``IdlePodKubelet`` plays the kubelet for the pool's pods: each idle pod's worker is a real
:class:`~peerbot.worker.idle.IdleWorker` served on its own loopback address (its pod IP), so the operator's
conditional claim goes through the API server and its hand-off over HTTP to the worker code. The claimed turn
is a script (answer at once, or wait for the test).

The operator tests run the real kopf operator (``peerbot.operator``) with ``WORKER_POOL_SIZE``; the launcher
tests drive :class:`~peerbot.operator.pool.WarmPool` step by step, two of them at once for the race.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot import claim
from peerbot.conversation import ConversationSpec
from peerbot.kube import api_client
from peerbot.naming import conversation_name
from peerbot.operator.handlers import REGISTRY
from peerbot.operator.jobs import WORKER_SECRET_KEYS, JobSettings, build_worker_job
from peerbot.operator.launcher import JobLauncher, Launch
from peerbot.operator.pool import PoolMetrics, TokenBook, WarmLauncher, WarmPool
from peerbot.operator.warm import PoolSettings, claim_patch
from peerbot.planner import TurnRequest
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from peerbot.testing.warm import IdlePodKubelet, free_port
from peerbot.worker.pointers import TurnPointers

NAMESPACE = "default"
WAIT = 10.0
IMAGE = "registry.test/peerbot-worker:test"
JOBS = JobSettings(
    namespace=NAMESPACE,
    image=IMAGE,
    service_account="peerbot-worker",
    secret_name="peerbot-secrets",
    cpu="1",
    memory="1Gi",
    session_timeout_minutes=5,
)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def worker_account(kubernetes_standin: KubernetesStandIn) -> None:
    """The chart creates the workers' ServiceAccount; the stand-in, like the real API, needs it for pods."""
    kubernetes_standin.create(
        "serviceaccounts",
        {"metadata": {"name": "peerbot-worker"}, "automountServiceAccountToken": False},
        NAMESPACE,
    )


@pytest.fixture
async def kubelet(
    kubernetes_standin: KubernetesStandIn, port: int, tmp_path: Path
) -> AsyncIterator[IdlePodKubelet]:
    async with IdlePodKubelet(kubernetes_standin, port=port, root=tmp_path / "kubelet") as kubelet:
        yield kubelet
    assert not kubelet.failures, kubelet.failures


@pytest.fixture
def run_operator(
    monkeypatch: pytest.MonkeyPatch,
    slack_standin: SlackStandIn,
    kubeconfig: Path,
    kubernetes_standin: KubernetesStandIn,
    worker_account: None,
    port: int,
) -> Callable[..., Any]:
    """Run ``kopf run -m peerbot.operator`` with the pool on, in a thread; returns a context manager."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_standin.bot_token)
    monkeypatch.setenv("SLACK_API_URL", slack_standin.api_url)
    monkeypatch.setenv("WORKER_IMAGE", IMAGE)
    monkeypatch.setenv("PEERBOT_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("WORKER_POOL_PORT", str(port))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    @contextlib.contextmanager
    def run(**env: str) -> Iterator[KopfRunner]:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            settings = kopf.OperatorSettings()
            settings.batching.idle_timeout = 0.2
            settings.batching.exit_timeout = 0.2
            args = ["run", "--standalone", "--namespace", NAMESPACE, "-m", "peerbot.operator"]
            with KopfRunner(args, registry=REGISTRY, settings=settings, timeout=WAIT) as runner:
                kubernetes_standin.wait_for_watch("conversations", NAMESPACE, timeout=WAIT)
                kubernetes_standin.wait_for_watch("pods", NAMESPACE, timeout=WAIT)
                yield runner
        assert runner.exception is None, runner.output

    return run


class Thread:
    """A Slack thread someone started by mentioning Peerbot, and its Conversation."""

    def __init__(self, slack: SlackStandIn, kube: KubernetesStandIn) -> None:
        self.slack = slack
        self.kube = kube
        self.channel = slack.public_channel
        self.thread_ts = slack.post_message(slack.human, self.channel, f"{slack.mention} fix it").ts
        self.name = conversation_name(slack.team_id, self.channel, self.thread_ts)

    def create(self) -> dict[str, Any]:
        """What the dispatcher does: post the status message, record the Conversation pointing at it."""
        status = self.slack.post_message(self.slack.bot_user_id, self.channel, "👀", thread_ts=self.thread_ts)
        spec = {
            "team": self.slack.team_id,
            "channel": self.channel,
            "threadTs": self.thread_ts,
            "user": self.slack.human,
            "requestedTs": self.thread_ts,
            "statusMessageTs": status.ts,
        }
        body = {"apiVersion": "peerbot.ai/v1", "kind": "Conversation", "metadata": {"name": self.name}}
        return self.kube.create("conversations", body | {"spec": spec}, NAMESPACE)

    def job(self, turn: int) -> str:
        return f"{self.name}-t{turn}"

    async def status(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def check(obj: dict[str, Any] | None) -> Any:
            return obj if obj and predicate(obj.get("status") or {}) else None

        found = await self.kube.await_for("conversations", NAMESPACE, self.name, check, timeout=WAIT)
        status: dict[str, Any] = found["status"]
        return status

    def jobs(self) -> list[str]:
        selector = f"peerbot.ai/conversation={self.name}"
        return [
            job["metadata"]["name"] for job in self.kube.objects("jobs", NAMESPACE, label_selector=selector)
        ]


@pytest.fixture
def thread(slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn) -> Thread:
    return Thread(slack_standin, kubernetes_standin)


# --- the operator ------------------------------------------------------------------------------------------


async def test_a_turn_claims_an_idle_pod_and_runs_to_the_end(
    run_operator, kubelet: IdlePodKubelet, thread: Thread, kubernetes_standin: KubernetesStandIn, kubectl
) -> None:
    with run_operator(WORKER_POOL_SIZE="1"):
        [idle] = await kubelet.wait_for_ready(1)
        thread.create()
        run = await kubelet.wait_for_turn(thread.job(1))
        status = await thread.status(lambda s: s.get("phase") == "Waiting")
        assert run.pod == idle
        assert status["startedWarm"] is True
        assert status["job"] == thread.job(1)
        assert status["answeredTs"] == thread.thread_ts
        assert thread.jobs() == []  # no Job: the idle pod ran the turn
        # The pod is the turn's now: its labels, its owner, its deadline.
        pod = kubernetes_standin.get("pods", NAMESPACE, idle)
        assert pod is not None
        assert pod["metadata"]["labels"]["peerbot.ai/conversation"] == thread.name
        assert pod["metadata"]["labels"][claim.LABEL_POOL] == "claimed"
        assert pod["metadata"]["ownerReferences"][0]["name"] == thread.name
        assert pod["spec"]["activeDeadlineSeconds"] >= 300
        assert run.pointers is not None
        assert run.pointers.peerbot_thread_ts == thread.thread_ts
        # The pool refilled after the claim.
        await kubelet.wait_for(lambda: [p for p in kubelet.ready_pods() if p != idle], what="a refill")

    table = kubectl("get", "conversations", "-o", "wide").stdout
    header, row = table.strip().splitlines()
    assert header.split()[-1] == "WARM"  # kubectl get conversations -o wide: warm or cold
    assert row.split()[-1] == "true"
    assert "Waiting" in row.split()


async def test_an_empty_pool_falls_back_to_a_job(run_operator, thread: Thread) -> None:
    # No kubelet runs the pool's pods: they never become Ready, so there is nothing to claim.
    with run_operator(WORKER_POOL_SIZE="2"):
        thread.create()
        status = await thread.status(lambda s: s.get("phase") == "Running" and "startedWarm" in s)
        assert status["startedWarm"] is False
        assert thread.jobs() == [thread.job(1)]


async def test_cancelling_a_warm_turn_stops_its_pod(
    run_operator, kubernetes_standin: KubernetesStandIn, kubelet: IdlePodKubelet, thread: Thread
) -> None:
    release = asyncio.Event()

    async def held(pointers: TurnPointers) -> tuple[int, str | None]:
        await release.wait()
        return 143, None

    kubelet.turn = held
    try:
        with run_operator(WORKER_POOL_SIZE="1"):
            [idle] = await kubelet.wait_for_ready(1)
            thread.create()
            await kubelet.wait_for(lambda: kubelet.runs[idle].claim, what="the claim")
            kubernetes_standin.patch(
                "conversations",
                NAMESPACE,
                thread.name,
                {"spec": {"cancelRequestedAt": "2026-01-01T00:00:00Z"}},
            )
            await thread.status(lambda s: s.get("phase") == "Cancelled")
            await kubernetes_standin.await_for("pods", NAMESPACE, idle, lambda pod: pod is None, timeout=WAIT)
    finally:
        release.set()


# --- the launcher, step by step ----------------------------------------------------------------------------


def pool_pods(kube: KubernetesStandIn) -> Callable[[], list[dict[str, Any]]]:
    return lambda: kube.objects("pods", NAMESPACE, label_selector=claim.LABEL_POOL)


def request(n: int) -> TurnRequest:
    spec = ConversationSpec.model_validate(
        {"team": "T0001", "channel": "C0001", "threadTs": f"17000000{n:02d}.000100", "user": "U0001"}
        | {"requestedTs": f"17000000{n:02d}.000100"}
    )
    name = f"t0001-c0001-17000000{n:02d}-000100"
    return TurnRequest(name, 1, 1, f"{name}-t1", spec, None)


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[Any]:
    client = await api_client()
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def pool(
    api: Any,
    kube: KubernetesStandIn,
    port: int,
    *,
    tokens: TokenBook | None = None,
    source: Callable[[], list[dict[str, Any]]] | None = None,
    **settings: Any,
) -> AsyncIterator[WarmPool]:
    values = {"size": 1, "port": port} | settings
    pods = source or pool_pods(kube)
    warm = WarmPool(api, JOBS, PoolSettings(**values), pods, PoolMetrics(), tokens=tokens)
    await warm.start(keep=False)
    try:
        yield warm
    finally:
        await warm.stop(retire_idle=False)


async def test_two_turns_racing_for_one_pod_never_share_it(
    api: Any, kubernetes_standin: KubernetesStandIn, kubelet: IdlePodKubelet, port: int, worker_account: None
) -> None:
    # Two operators that both know the pod's token and both see it idle (their caches a moment behind the
    # API server, as kopf's index can be): the API server decides which claim is applied.
    tokens = TokenBook()
    async with pool(api, kubernetes_standin, port, tokens=tokens) as maker:
        await maker.reconcile_once()
    [idle] = await kubelet.wait_for_ready(1)
    seen = pool_pods(kubernetes_standin)()
    async with (
        pool(api, kubernetes_standin, port, tokens=tokens, source=lambda: copy.deepcopy(seen)) as first,
        pool(api, kubernetes_standin, port, tokens=tokens, source=lambda: copy.deepcopy(seen)) as second,
    ):
        launchers = [
            WarmLauncher(first, JobLauncher(api, JOBS)),
            WarmLauncher(second, JobLauncher(api, JOBS)),
        ]
        now = datetime.now(UTC)
        outcomes = await asyncio.gather(
            launchers[0].start(request(1), "uid-1", now), launchers[1].start(request(2), "uid-2", now)
        )
        assert sorted(o.value for o in outcomes if o is not None) == ["cold", "warm"]
        winner, loser = (request(1), request(2)) if outcomes[0] is Launch.WARM else (request(2), request(1))
        pod = kubernetes_standin.get("pods", NAMESPACE, idle)
        assert pod is not None
        assert pod["metadata"]["annotations"][claim.ANNOTATION_JOB] == winner.job_name
        run = await kubelet.wait_for_turn(winner.job_name)
        assert run.pod == idle
        assert run.refused == {}  # the loser never reached the worker: the API server turned it away
        jobs = [job["metadata"]["name"] for job in kubernetes_standin.objects("jobs", NAMESPACE)]
        assert jobs == [loser.job_name]
        contended = first.metrics.fallbacks.labels(reason="contended")._value.get()
        contended += second.metrics.fallbacks.labels(reason="contended")._value.get()
        claims = first.metrics.claims._value.get() + second.metrics.claims._value.get()
        assert (contended, claims) == (1, 1)

        # Starting either turn again is a no-op on either side: the warm one has its pod, the cold its Job.
        for launcher in launchers:
            assert await launcher.start(winner, "uid", now) is None
            assert await launcher.start(loser, "uid", now) is None
        assert [job["metadata"]["name"] for job in kubernetes_standin.objects("jobs", NAMESPACE)] == jobs


async def test_of_many_conditional_claims_of_one_pod_exactly_one_is_applied(
    api: Any, kubernetes_standin: KubernetesStandIn, port: int, worker_account: None
) -> None:
    """The guarantee underneath: the API server applies exactly one of many concurrent claim patches."""
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(api)
    async with pool(api, kubernetes_standin, port) as warm:
        await warm.reconcile_once()
    [pod] = kubernetes_standin.objects("pods", NAMESPACE, label_selector=claim.LABEL_POOL)

    async def claim_it(n: int) -> int:
        patch = claim_patch(pod, request(n), JOBS, f"uid-{n}", datetime.now(UTC))
        try:
            await core.patch_namespaced_pod(
                pod["metadata"]["name"], NAMESPACE, patch, _content_type="application/json-patch+json"
            )
        except ApiException as error:
            return int(error.status)
        return 200

    statuses = await asyncio.gather(*(claim_it(n) for n in range(10)))
    assert sorted(statuses) == [200] + [422] * 9


async def test_an_idle_pod_holds_no_secret_and_no_user_data(
    api: Any, kubernetes_standin: KubernetesStandIn, port: int, worker_account: None
) -> None:
    async with pool(api, kubernetes_standin, port) as warm:
        await warm.reconcile_once()
        [pod] = kubernetes_standin.objects("pods", NAMESPACE, label_selector=claim.LABEL_POOL)
        token = warm.tokens.get(pod["metadata"]["name"])
    assert token
    container = pod["spec"]["containers"][0]
    # The only secrets: the worker Secret's keys a cold Job refers to, by reference (docs/warm-workers.md).
    job = build_worker_job(request(1), JOBS, "uid", datetime.now(UTC))
    job_refs = [e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e]
    refs = [e for e in container["env"] if "valueFrom" in e]
    assert refs == job_refs
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in refs} == set(WORKER_SECRET_KEYS.values())
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v or "projected" in v]
    assert not [s for s in container.get("envFrom", []) if "secretRef" in s]
    assert pod["spec"]["automountServiceAccountToken"] is False
    # No user data: no pointer of any turn, no Slack id, no owner but (at most) the operator.
    text = json.dumps(pod)
    assert token not in text
    for forbidden in ("T0001", "C0001", "U0001", "1700000001", "peerbot.ai/conversation", "peerbot.ai/user"):
        assert forbidden not in text
    pointers = [
        e["name"]
        for e in container["env"]
        if e["name"] in claim.POINTERS and e["name"] != "SESSION_TIMEOUT_MINUTES"
    ]
    assert pointers == []
    assert "ownerReferences" not in pod["metadata"]


async def test_the_pool_refills_and_recycles(
    api: Any, kubernetes_standin: KubernetesStandIn, kubelet: IdlePodKubelet, port: int, worker_account: None
) -> None:
    offset = timedelta()
    aged: set[str] = set()  # pods the test makes look 80 s older than they are
    listing = pool_pods(kubernetes_standin)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    def pods() -> list[dict[str, Any]]:
        found = listing()
        for pod in found:
            if pod["metadata"]["name"] in aged:
                created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                pod["metadata"]["creationTimestamp"] = (created - timedelta(seconds=80)).isoformat()
                pod["metadata"]["resourceVersion"] += "-aged"  # another object, as far as readers know
        return found

    warm = WarmPool(
        api,
        JOBS,
        PoolSettings(size=2, port=port, max_idle=timedelta(minutes=1)),
        pods,
        PoolMetrics(),
        finished_ttl=timedelta(minutes=5),
        clock=clock,
    )
    await warm.start(keep=False)
    try:
        assert (await warm.reconcile_once()).create == 2
        first = set(await kubelet.wait_for_ready(2))
        assert (await warm.reconcile_once()).create == 0

        # A claim: the pool makes another pod at once.
        launcher = WarmLauncher(warm, JobLauncher(api, JOBS))
        assert await launcher.start(request(1), "uid", datetime.now(UTC)) is Launch.WARM
        await kubelet.wait_for_turn(request(1).job_name)
        assert (await warm.reconcile_once()).create == 1
        await kubelet.wait_for_ready(2)
        idle = set(kubelet.ready_pods())
        assert len(idle & first) == 1

        # Later: both are idle longer than max_idle. Replacements first, then the old ones go.
        aged.update(idle)  # past max_idle (60 s), not yet past the hard limit (90 s)
        plan = await warm.reconcile_once()
        assert (plan.create, plan.retire) == (2, ())
        await kubelet.wait_for(lambda: len(set(kubelet.ready_pods()) - idle) == 2, what="two fresh pods")
        plan = await warm.reconcile_once()
        assert sorted(name for name, _ in plan.retire) == sorted(idle)
        for name in idle:
            await kubernetes_standin.await_for("pods", NAMESPACE, name, lambda pod: pod is None, timeout=WAIT)
        assert warm.metrics.recycled.labels(reason="max_idle")._value.get() == 2

        # The claimed pod's turn ended; after the TTL it goes too, as a Job would.
        offset = timedelta(minutes=10)
        plan = await warm.reconcile_once()
        assert [why for _, why in plan.delete] == ["finished"]

        # A restarted operator knows none of the tokens: it replaces the pool it finds.
        async with pool(api, kubernetes_standin, port, size=2) as restarted:
            plan = await restarted.reconcile_once()
            assert {why for _, why in plan.retire} == {"unknown"}
            assert plan.create == 2
    finally:
        await warm.stop(retire_idle=False)


async def test_a_pod_that_does_not_take_the_hand_off_is_replaced_by_a_job(
    api: Any, kubernetes_standin: KubernetesStandIn, port: int, worker_account: None
) -> None:
    async with pool(api, kubernetes_standin, port) as warm:
        await warm.reconcile_once()
        [pod] = kubernetes_standin.objects("pods", NAMESPACE, label_selector=claim.LABEL_POOL)
        name = pod["metadata"]["name"]
        # Ready as far as Kubernetes knows, but nothing listens at its address.
        kubernetes_standin.patch(
            "pods",
            NAMESPACE,
            name,
            {
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.0.254",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
            subresource="status",
        )
        launcher = WarmLauncher(warm, JobLauncher(api, JOBS))
        assert await launcher.start(request(1), "uid", datetime.now(UTC)) is Launch.COLD
        assert kubernetes_standin.get("pods", NAMESPACE, name) is None
        jobs = [job["metadata"]["name"] for job in kubernetes_standin.objects("jobs", NAMESPACE)]
        assert jobs == [request(1).job_name]
        assert warm.metrics.fallbacks.labels(reason="handoff")._value.get() == 1


async def test_a_pool_that_may_not_create_pods_backs_off_and_turns_start_as_jobs(
    api: Any, kubernetes_standin: KubernetesStandIn, port: int, worker_account: None
) -> None:
    kubernetes_standin.deny("create", "pods")  # a Role without the pool's rules (worker.pool.size was 0)
    async with pool(api, kubernetes_standin, port) as warm:
        plan = await warm.reconcile_once()  # tries, is refused, says why, does not raise
        assert plan.create == 1
        assert warm.metrics.errors.labels(kind="create_403")._value.get() == 1
        assert (await warm.reconcile_once()).create == 0  # backing off
        launcher = WarmLauncher(warm, JobLauncher(api, JOBS))
        assert await launcher.start(request(1), "uid", datetime.now(UTC)) is Launch.COLD
        assert warm.metrics.fallbacks.labels(reason="empty")._value.get() == 1


async def test_a_turn_whose_job_exists_is_not_started_again(
    api: Any, kubernetes_standin: KubernetesStandIn, worker_account: None
) -> None:
    """The cold launcher's own contract, which the warm one falls back on: a second start is a no-op, and a
    Job the API server refuses is an error, never a turn reported as started."""
    launcher = JobLauncher(api, JOBS)
    assert await launcher.start(request(1), "uid", datetime.now(UTC)) is Launch.COLD
    assert await launcher.start(request(1), "uid", datetime.now(UTC)) is None
    kubernetes_standin.deny("create", "jobs", group="batch")
    with pytest.raises(ApiException) as refused:
        await launcher.start(request(2), "uid", datetime.now(UTC))
    assert refused.value.status == 403
