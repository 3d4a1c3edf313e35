"""The warm pool's pure core: the idle pod, the claim, a claimed pod as a Job, the pool's plan, demand."""

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import pytest

from peerbot import claim
from peerbot.conversation import Conversation, ConversationSpec
from peerbot.operator.jobs import WORKER_SECRET_KEYS, JobSettings, build_worker_job
from peerbot.operator.warm import (
    HARD_IDLE_FACTOR,
    POD_START_TIMEOUT,
    Demand,
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
from peerbot.planner import PatchStatus, PlannerSettings, StartTurn, TurnRequest, plan
from peerbot.result import Outcome, TurnResult
from peerbot.settings import SettingsError
from peerbot.worker.idle import pointers_from_claim

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SPEC = ConversationSpec.model_validate(
    {
        "team": "T024BE7LD",
        "channel": "C01ABCDEF",
        "threadTs": "1700000000.123456",
        "user": "U01ABCDEF",
        "requestedTs": "1700000042.000100",
        "repository": "acme/api",
        "statusMessageTs": "1700000043.000200",
    }
)
JOBS = JobSettings(
    namespace="peerbot",
    image="registry.example/peerbot-worker:1.2.3",
    service_account="peerbot-worker",
    secret_name="peerbot-secrets",
    cpu="2000m",
    memory="4Gi",
    session_timeout_minutes=5,
    config_map="peerbot-worker-config",
)
POOL = PoolSettings(size=2, max_idle=timedelta(minutes=30), port=8090)
CONVERSATION = "t024be7ld-c01abcdef-1700000000-123456"
REQUEST = TurnRequest(
    conversation=CONVERSATION,
    turn=3,
    attempt=1,
    job_name=f"{CONVERSATION}-t3",
    spec=SPEC,
    answered_ts="1700000001.000000",
)
TOKEN = "a-claim-token-that-only-the-operator-knows"
USER_VALUES = ("T024BE7LD", "C01ABCDEF", "U01ABCDEF", "1700000000.123456", "acme/api", CONVERSATION)


def idle_pod(**pool_overrides: Any) -> dict[str, Any]:
    settings = PoolSettings(**{**POOL.__dict__, **pool_overrides})
    return build_idle_pod(JOBS, settings, claim.token_digest(TOKEN), NOW)


def started(
    pod: dict[str, Any], name: str = "peerbot-worker-idle-abcde", uid: str = "uid-pod-1", at: datetime = NOW
) -> dict[str, Any]:
    """The pod as the API server and the kubelet leave it: named, with a uid, Running and Ready."""
    pod = copy.deepcopy(pod)
    pod["metadata"].update(name=name, uid=uid, creationTimestamp=at.isoformat().replace("+00:00", "Z"))
    pod["status"] = {
        "phase": "Running",
        "podIP": "10.8.0.7",
        "startTime": at.isoformat().replace("+00:00", "Z"),
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "worker", "ready": True, "state": {"running": {}}}],
    }
    return pod


# --- the idle pod -------------------------------------------------------------------------------------------


def test_the_idle_pod_is_the_cold_jobs_pod_without_the_turn():
    pod = idle_pod()
    job_pod = build_worker_job(REQUEST, JOBS, "uid", NOW)["spec"]["template"]["spec"]
    spec = copy.deepcopy(pod["spec"])
    container = spec["containers"][0]
    assert container.pop("args") == ["worker", "--idle"]
    assert container.pop("ports") == [{"name": "claim", "containerPort": 8090, "protocol": "TCP"}]
    assert container.pop("readinessProbe")["httpGet"] == {"path": "/ready", "port": "claim"}
    idle_env = container.pop("env")
    cold = copy.deepcopy(job_pod)
    cold_env = cold["containers"][0].pop("env")
    cold["containers"][0].pop("args")
    # Everything else (security context, resources, volumes, service account, no token) is the Job's.
    assert spec == cold
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "activeDeadlineSeconds" not in pod["spec"]
    # The environment: the Job's minus every pointer, plus the pool's own three.
    without_pointers = [e for e in cold_env if not e["name"].startswith("PEERBOT_")]
    names = [e["name"] for e in idle_env]
    assert idle_env[: len(without_pointers)] == without_pointers
    assert names[len(without_pointers) :] == [
        claim.ENV_TOKEN_DIGEST,
        claim.ENV_IDLE_PORT,
        claim.ENV_IDLE_TIMEOUT,
    ]


def test_an_idle_pod_holds_only_the_jobs_secret_references_and_nothing_of_any_user():
    pod = idle_pod()
    container = pod["spec"]["containers"][0]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {name: {"name": "peerbot-secrets", "key": key} for name, key in WORKER_SECRET_KEYS.items()}
    assert not any("secretRef" in source for source in container.get("envFrom", []))
    assert not any("secret" in volume for volume in pod["spec"]["volumes"])
    text = json.dumps(pod)
    assert TOKEN not in text, "the claim token itself is never in the pod spec, only its SHA-256"
    assert claim.token_digest(TOKEN) in text
    for value in USER_VALUES:
        assert value not in text
    assert set(pod["metadata"]["labels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        claim.LABEL_POOL,
    }
    assert pod["metadata"]["labels"][claim.LABEL_POOL] == "idle"
    assert "ownerReferences" not in pod["metadata"]


def test_the_idle_pod_belongs_to_the_operator_pod_when_it_knows_itself():
    pod = idle_pod(owner_name="peerbot-operator-7d9f", owner_uid="uid-operator")
    assert pod["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "peerbot-operator-7d9f", "uid": "uid-operator"}
    ]
    assert pod["metadata"]["generateName"] == "peerbot-worker-idle-"


def test_the_idle_worker_exits_by_itself_a_while_after_the_pool_would_have_replaced_it():
    env = {
        e["name"]: e.get("value")
        for e in idle_pod(max_idle=timedelta(minutes=10))["spec"]["containers"][0]["env"]
    }
    assert float(env[claim.ENV_IDLE_TIMEOUT]) == 15 * 60


# --- the claim ----------------------------------------------------------------------------------------------


def test_the_claim_makes_the_pod_the_turns():
    pod = started(idle_pod(owner_name="op", owner_uid="uid-op"), at=NOW - timedelta(minutes=7, seconds=30))
    patched = jsonpatch.apply_patch(pod, claim_patch(pod, REQUEST, JOBS, "uid-conversation", NOW))
    labels = patched["metadata"]["labels"]
    assert labels[claim.LABEL_POOL] == "claimed"
    assert labels["peerbot.ai/conversation"] == CONVERSATION
    assert labels["peerbot.ai/turn"] == "3"
    assert labels["peerbot.ai/attempt"] == "1"
    assert labels["peerbot.ai/user"] == "U01ABCDEF"
    annotations = patched["metadata"]["annotations"]
    assert annotations[claim.ANNOTATION_JOB] == REQUEST.job_name
    assert annotations[claim.ANNOTATION_CLAIMED_AT] == "2026-11-22T12:00:00Z"
    assert annotations["peerbot.ai/requested-ts"] == SPEC.requested_ts
    # The Conversation owns it now (as it owns Jobs); the operator pod no longer does.
    assert patched["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "peerbot.ai/v1",
            "kind": "Conversation",
            "name": CONVERSATION,
            "uid": "uid-conversation",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    # A pod's deadline counts from its start: the 450 s it idled plus the turn's 5 minutes.
    assert patched["spec"]["activeDeadlineSeconds"] == 450 + 300


def test_a_pod_claimed_or_retired_cannot_be_claimed_again():
    pod = started(idle_pod())
    claimed = jsonpatch.apply_patch(pod, claim_patch(pod, REQUEST, JOBS, "uid", NOW))
    other = TurnRequest(CONVERSATION + "x", 1, 1, CONVERSATION + "x-t1", SPEC, None)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(claimed, claim_patch(pod, other, JOBS, "uid", NOW))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(claimed, retire_patch())
    retired = jsonpatch.apply_patch(pod, retire_patch())
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(retired, claim_patch(pod, REQUEST, JOBS, "uid", NOW))
    # The same name with another uid is another pod: never claimed by mistake.
    recreated = started(idle_pod(), uid="uid-pod-2")
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(recreated, claim_patch(pod, REQUEST, JOBS, "uid", NOW))


def test_undoing_a_claim_leaves_no_trace_of_the_turn():
    pod = started(idle_pod())
    claimed = jsonpatch.apply_patch(pod, claim_patch(pod, REQUEST, JOBS, "uid", NOW))
    undone = jsonpatch.apply_patch(claimed, unclaim_patch(REQUEST.job_name, REQUEST))
    assert undone["metadata"]["labels"][claim.LABEL_POOL] == "failed"
    assert not [
        key
        for key in undone["metadata"]["labels"]
        if key.startswith("peerbot.ai/") and key != claim.LABEL_POOL
    ]
    assert warm_job_view(undone) is None


def test_the_hand_off_carries_exactly_the_pointers_a_cold_job_would():
    body = claim_request(REQUEST, JOBS, "uid", NOW)
    env = build_worker_job(REQUEST, JOBS, "uid", NOW)["spec"]["template"]["spec"]["containers"][0]["env"]
    cold = {e["name"]: e["value"] for e in env if e["name"].startswith("PEERBOT_")}
    assert {k: v for k, v in body.pointers.items() if k.startswith("PEERBOT_")} == cold
    assert body.claim == REQUEST.job_name
    assert body.pointers["PEERBOT_DEADLINE"] == "2026-11-22T12:05:00Z"
    assert not {"SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"} & set(body.pointers)
    pointers = pointers_from_claim(body.pointers)
    assert pointers.peerbot_conversation == CONVERSATION
    assert pointers.peerbot_repository == "acme/api"
    assert pointers.peerbot_turn == 3


@pytest.mark.parametrize(
    "name",
    ["SLACK_BOT_TOKEN", "PEERBOT_RESULT_FILE", "PEERBOT_CLAIM_TOKEN_SHA256", "WORKSPACE_DIR", "peerbot_x"],
)
def test_a_claim_cannot_set_anything_but_pointers(name):
    with pytest.raises(ValueError, match="not turn pointers"):
        claim.ClaimRequest(claim="x-t1", pointers={name: "value"})


def test_the_idle_processs_own_environment_never_stands_in_for_a_pointer(monkeypatch):
    monkeypatch.setenv("PEERBOT_REPOSITORY", "someone/else")
    monkeypatch.setenv("PEERBOT_STATUS_MESSAGE_TS", "1.2")
    pointers = dict(claim_request(REQUEST, JOBS, "uid", NOW).pointers)
    pointers["PEERBOT_REPOSITORY"] = ""
    del pointers["PEERBOT_STATUS_MESSAGE_TS"]
    parsed = pointers_from_claim(pointers)
    assert parsed.peerbot_repository is None
    assert parsed.peerbot_status_message_ts is None
    with pytest.raises(SettingsError, match="PEERBOT_TEAM"):
        pointers_from_claim({k: v for k, v in pointers.items() if k != "PEERBOT_TEAM"})


def test_tokens_are_checked_by_digest():
    digest = claim.token_digest(TOKEN)
    assert claim.token_matches(TOKEN, digest)
    assert not claim.token_matches(TOKEN + "x", digest)
    assert not claim.token_matches("", digest)
    assert not claim.token_matches(TOKEN, "")
    assert claim.new_token() != claim.new_token()


# --- a claimed pod, as the planner sees it ------------------------------------------------------------------


def claimed(status: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    pod = started(idle_pod())
    pod = dict(jsonpatch.apply_patch(pod, claim_patch(pod, REQUEST, JOBS, "uid", NOW)))
    pod["status"] = status
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-11-22T12:02:00Z"
    return pod


def terminated(
    code: int, message: str | None = None, reason: str | None = None, phase: str | None = None
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": code,
        "finishedAt": "2026-11-22T12:03:00Z",
        "reason": reason or "Completed",
    }
    if message:
        state["message"] = message
    status: dict[str, Any] = {"containerStatuses": [{"name": "worker", "state": {"terminated": state}}]}
    if phase:
        status["phase"] = phase
    return status


def conversation(**status: Any) -> Conversation:
    return Conversation.model_validate(
        {"metadata": {"name": CONVERSATION}, "spec": SPEC.to_api(), "status": status}
    )


def test_a_running_claimed_pod_is_a_running_job():
    view = warm_job_view(claimed({"phase": "Running"}))
    assert view is not None
    assert (view.name, view.turn, view.attempt) == (REQUEST.job_name, 3, 1)
    assert view.running
    assert view.created_at == NOW
    assert view.requested_ts == SPEC.requested_ts
    assert warm_job_view(started(idle_pod())) is None


def test_the_planner_reads_a_warm_turns_outcome_as_a_jobs():
    done = TurnResult(outcome=Outcome.DONE, answeredTs=SPEC.requested_ts).to_document()
    view = warm_job_view(claimed(terminated(0, done, phase="Succeeded")))
    assert view is not None
    assert view.complete
    assert view.finished_at == NOW + timedelta(minutes=3)
    running = conversation(phase="Running", job=REQUEST.job_name, turns=3, attemptedTs=SPEC.requested_ts)
    result = plan(running, [view], NOW + timedelta(minutes=4), PlannerSettings())
    patch = next(a.patch for a in result.actions if isinstance(a, PatchStatus))
    assert patch["phase"] == "Waiting"
    assert patch["answeredTs"] == SPEC.requested_ts


def test_a_warm_pod_stopped_at_its_deadline_is_a_timed_out_turn():
    status = terminated(143, reason="Error", phase="Failed") | {"reason": "DeadlineExceeded"}
    view = warm_job_view(claimed(status))
    assert view is not None
    assert view.failed_reason == "DeadlineExceeded"
    running = conversation(phase="Running", job=REQUEST.job_name, turns=3, attemptedTs=SPEC.requested_ts)
    result = plan(running, [view], NOW + timedelta(minutes=6), PlannerSettings())
    patch = next(a.patch for a in result.actions if isinstance(a, PatchStatus))
    assert patch["phase"] == "TimedOut"


def test_an_evicted_warm_pod_is_retried_once_like_a_jobs_pod():
    status = terminated(143, reason="Error") | {
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]
    }
    view = warm_job_view(claimed(status, deleting=True))
    assert view is not None
    assert view.finished
    assert not view.running
    running = conversation(phase="Running", job=REQUEST.job_name, turns=3, attemptedTs=SPEC.requested_ts)
    result = plan(running, [view], NOW + timedelta(minutes=4), PlannerSettings())
    retry = next(a for a in result.actions if isinstance(a, StartTurn))
    assert retry.request.job_name == f"{REQUEST.job_name}-a2"
    # Still shutting down (no terminated state yet): not finished, the planner waits.
    view = warm_job_view(claimed({"phase": "Running"}, deleting=True))
    assert view is not None
    assert not view.finished
    assert not view.running


def test_pool_pod_reads_what_the_pool_needs():
    pod = started(idle_pod())
    view = pool_pod(pod, known=True, now=NOW)
    assert view.claimable
    assert (view.ip, view.pool, view.created_at) == ("10.8.0.7", "idle", NOW)
    assert not pool_pod(pod, known=False, now=NOW).claimable
    pending = pool_pod(
        idle_pod() | {"metadata": {"name": "p", "labels": {claim.LABEL_POOL: "idle"}}}, True, NOW
    )
    assert not pending.claimable


# --- the pool's plan ----------------------------------------------------------------------------------------


def pp(name: str, age: timedelta = timedelta(minutes=1), **fields: Any) -> PoolPod:
    defaults: dict[str, Any] = {"pool": "idle", "phase": "Running", "ready": True, "ip": "10.0.0.1"}
    return PoolPod(name=name, created_at=NOW - age, **(defaults | fields))


TTL = timedelta(hours=1)


def test_the_pool_fills_up_to_its_target_counting_pods_still_starting():
    assert plan_pool([], NOW, POOL, 2, finished_ttl=TTL).create == 2
    assert plan_pool([pp("a")], NOW, POOL, 2, finished_ttl=TTL).create == 1
    assert (
        plan_pool([pp("a"), pp("b", ready=False, phase="Pending")], NOW, POOL, 2, finished_ttl=TTL).create
        == 0
    )
    # A claimed pod is not in the pool any more: it is refilled.
    assert plan_pool([pp("a"), pp("b", pool="claimed")], NOW, POOL, 2, finished_ttl=TTL).create == 1


def test_pods_idle_too_long_are_replaced_before_they_are_removed():
    due = [pp("a", age=timedelta(minutes=31)), pp("b", age=timedelta(minutes=31))]
    first = plan_pool(due, NOW, POOL, 2, finished_ttl=TTL)
    assert (first.create, first.retire) == (2, ())  # make...
    fresh = [pp("c"), pp("d", ready=False, phase="Pending")]
    assert plan_pool(due + fresh, NOW, POOL, 2, finished_ttl=TTL).retire == ()
    fresh[1] = pp("d")
    second = plan_pool(due + fresh, NOW, POOL, 2, finished_ttl=TTL)
    assert (second.create, second.retire) == (0, (("a", "max_idle"), ("b", "max_idle")))  # ...before break
    # Past the hard limit a pod goes whatever happens.
    old = pp("a", age=POOL.max_idle * HARD_IDLE_FACTOR + timedelta(seconds=1))
    assert plan_pool([old], NOW, POOL, 2, finished_ttl=TTL).retire == (("a", "max_idle"),)


def test_the_pool_shrinks_oldest_first_when_the_target_falls():
    pods = [
        pp("young", age=timedelta(minutes=1)),
        pp("old", age=timedelta(minutes=9)),
        pp("mid", age=timedelta(minutes=5)),
    ]
    result = plan_pool(pods, NOW, POOL, 1, finished_ttl=TTL)
    assert result.retire == (("old", "surplus"), ("mid", "surplus"))
    assert result.create == 0


def test_the_pool_cleans_up_what_it_cannot_use():
    pods = [
        pp("foreign", known=False),
        pp("exited", phase="Succeeded", ready=False),
        pp("stuck", ready=False, phase="Pending", age=POD_START_TIMEOUT + timedelta(seconds=1)),
        pp("done", pool="claimed", phase="Succeeded", finished_at=NOW - TTL),
        pp("busy", pool="claimed", phase="Running"),
        pp("recent", pool="claimed", phase="Succeeded", finished_at=NOW - TTL + timedelta(seconds=5)),
        pp("leftover", pool="retiring"),
        pp("handoff", pool="failed"),
        pp("going", deleting=True),
    ]
    result = plan_pool(pods, NOW, POOL, 0, finished_ttl=TTL)
    assert set(result.retire) == {("foreign", "unknown"), ("stuck", "pending_too_long")}
    assert set(result.delete) == {
        ("exited", "exited"),
        ("done", "finished"),
        ("leftover", "retired"),
        ("handoff", "handoff"),
    }


def test_pods_that_can_never_start_stop_the_creations():
    broken = pp("bad", ready=False, phase="Pending", waiting_reason="CreateContainerConfigError")
    result = plan_pool([broken], NOW, POOL, 2, finished_ttl=TTL)
    assert result.delete == (("bad", "never_starts"),)
    assert result.create == 0
    assert "Secret" in result.broken[0][1]
    assert plan_pool([], NOW, POOL, 2, finished_ttl=TTL, can_create=False).create == 0


def test_demand_sizes_the_pool_between_min_and_max():
    fixed = Demand(PoolSettings(size=3), started_at=NOW)
    for second in range(20):
        fixed.record(NOW + timedelta(seconds=second))
    assert fixed.target(NOW + timedelta(seconds=30)) == 3

    settings = PoolSettings(size=2, min=1, max=5)
    demand = Demand(settings, started_at=NOW)
    assert demand.target(NOW) == 2  # no history yet: the size
    later = NOW + timedelta(minutes=11)
    assert demand.target(later) == 1  # a quiet ten minutes: the minimum
    for second in range(0, 40, 10):  # four starts within one minute
        demand.record(later + timedelta(seconds=second))
    assert demand.peak_per_minute(later + timedelta(minutes=1)) == 4
    assert demand.target(later + timedelta(minutes=1)) == 4
    for second in range(10):
        demand.record(later + timedelta(minutes=2, seconds=second))
    assert demand.target(later + timedelta(minutes=3)) == 5  # never above the maximum
    assert demand.target(later + timedelta(minutes=13)) == 1  # the window has passed


def test_the_claims_pointers_are_the_jobs_and_the_workers():
    env = build_worker_job(REQUEST, JOBS, "uid", NOW)["spec"]["template"]["spec"]["containers"][0]["env"]
    job_pointers = {e["name"] for e in env if "value" in e and e["name"].startswith("PEERBOT_")}
    assert job_pointers | {"SESSION_TIMEOUT_MINUTES"} == claim.POINTERS
    from peerbot.settings import PeerbotSettings
    from peerbot.worker.pointers import TurnPointers

    worker = {name.upper() for name in TurnPointers.model_fields if name not in PeerbotSettings.model_fields}
    assert worker == job_pointers


def test_the_pools_metrics_live_in_the_operators_registry():
    from peerbot.metrics import OperatorMetrics
    from peerbot.operator.pool import PoolMetrics

    operator = OperatorMetrics()
    pool = PoolMetrics(operator.registry)
    pool.claims.inc()
    pool.fallbacks.labels(reason="empty").inc()
    pool.claim_seconds.observe(0.05)
    pool.pods.labels(state="ready").set(2)
    pool.target.set(3)
    text = operator.render().decode()
    for line in (
        "peerbot_operator_pool_claims_total 1.0",
        'peerbot_operator_pool_fallbacks_total{reason="empty"} 1.0',
        'peerbot_operator_pool_fallbacks_total{reason="handoff"} 0.0',
        'peerbot_operator_pool_claim_seconds_bucket{le="0.075"} 1.0',
        'peerbot_operator_pool_pods{state="ready"} 2.0',
        'peerbot_operator_pool_pods{state="claimed"} 0.0',
        "peerbot_operator_pool_target 3.0",
    ):
        assert line in text, line
