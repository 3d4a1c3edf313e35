"""The reconcile planner, rule by rule, without any server."""

from datetime import UTC, datetime, timedelta

import pytest

from peerbot.conversation import Conversation, ConversationSpec, ConversationStatus, Tokens
from peerbot.planner import (
    ClusterView,
    DeleteConversation,
    DeleteJob,
    JobView,
    Notify,
    PatchStatus,
    PlannerSettings,
    PodView,
    Reaction,
    RecordEvent,
    StartTurn,
    plan,
    plan_invalid_spec,
    spec_problems,
)
from peerbot.result import ErrorKind, Outcome, TurnError, TurnResult

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = PlannerSettings(session_timeout_minutes=5)
NAME = "t1-c1-1700000000-000001"
SPEC = {
    "team": "T1",
    "channel": "C1",
    "threadTs": "1700000000.000001",
    "user": "U1",
    "requestedTs": "1700000000.000001",
}


def conversation(spec=None, **status) -> Conversation:
    return Conversation(
        metadata={"name": NAME, "uid": "uid-1"},
        spec=ConversationSpec.model_validate(SPEC | (spec or {})),
        status=ConversationStatus.model_validate(status),
    )


def result_pod(result: TurnResult, exit_code=0) -> PodView:
    return PodView(
        name="p",
        phase="Succeeded" if exit_code == 0 else "Failed",
        terminated_reason="Completed",
        exit_code=exit_code,
        termination_message=result.to_document(),
    )


def job(turn=1, attempt=1, requested="1700000000.000001", **kwargs) -> JobView:
    name = f"{NAME}-t{turn}" + (f"-a{attempt}" if attempt > 1 else "")
    return JobView(name=name, turn=turn, attempt=attempt, requested_ts=requested, **kwargs)


def kinds(actions):
    return [type(a).__name__ for a in actions]


def status_patch(actions) -> dict:
    patches = [a.patch for a in actions if isinstance(a, PatchStatus)]
    assert len(patches) == 1
    return patches[0]


def test_first_turn_starts_a_job():
    actions = plan(conversation(), [], NOW, SETTINGS).actions
    assert kinds(actions) == ["StartTurn", "PatchStatus", "RecordEvent"]
    start = actions[0]
    assert isinstance(start, StartTurn)
    assert start.request.turn == 1
    assert start.request.job_name == f"{NAME}-t1"
    assert start.request.answered_ts is None
    patch = status_patch(actions)
    assert patch["phase"] == "Running"
    assert patch["job"] == f"{NAME}-t1"
    assert patch["attemptedTs"] == SPEC["requestedTs"]


def test_plan_is_deterministic_and_converges():
    conv = conversation()
    first = plan(conv, [], NOW, SETTINGS).actions
    assert first == plan(conv, [], NOW, SETTINGS).actions
    # Apply: status patched, Job exists and runs: nothing more to do.
    applied = conversation(**status_patch(first))
    assert not plan(applied, [job(active=1)], NOW, SETTINGS)


def test_restart_between_job_creation_and_status_patch_adopts_the_job():
    conv = conversation()  # status never patched
    actions = plan(conv, [job(active=1)], NOW, SETTINGS).actions
    assert not any(isinstance(a, StartTurn) for a in actions)
    assert status_patch(actions)["job"] == f"{NAME}-t1"
    assert status_patch(actions)["turns"] == 1


def test_restart_with_a_cold_cache_creates_the_same_job_name():
    """Even without seeing the Job, the planner names turn 1 the same: creating it again is a no-op."""
    conv = conversation()
    a = plan(conv, [], NOW, SETTINGS).actions[0]
    b = plan(conv, [], NOW + timedelta(seconds=5), SETTINGS).actions[0]
    assert isinstance(a, StartTurn)
    assert isinstance(b, StartTurn)
    assert a.request.job_name == b.request.job_name


def test_follow_up_during_a_run_waits_then_becomes_the_next_turn():
    running = conversation(
        spec={"requestedTs": "1700000000.000009"},
        phase="Running",
        job=f"{NAME}-t1",
        turns=1,
        attemptedTs="1700000000.000001",
    )
    assert not plan(running, [job(active=1)], NOW, SETTINGS)
    done = TurnResult(outcome=Outcome.DONE, answeredTs="1700000000.000001", tokens=Tokens(input=10, output=5))
    finished = job(complete=True, pods=(result_pod(done),))
    record = plan(running, [finished], NOW, SETTINGS).actions
    patch = status_patch(record)
    assert patch["phase"] == "Waiting"
    assert patch["answeredTs"] == "1700000000.000001"
    assert patch["tokens"]["input"] == 10
    recorded = conversation(spec={"requestedTs": "1700000000.000009"}, **(running.status.to_api() | patch))
    nxt = plan(recorded, [finished], NOW, SETTINGS).actions
    assert isinstance(nxt[0], StartTurn)
    assert nxt[0].request.turn == 2
    assert nxt[0].request.answered_ts == "1700000000.000001"


def test_follow_up_after_the_answer_starts_turn_two():
    conv = conversation(
        spec={"requestedTs": "1700000100.000000"},
        phase="Waiting",
        job=f"{NAME}-t1",
        turns=1,
        answeredTs="1700000000.000001",
        attemptedTs="1700000000.000001",
    )
    actions = plan(conv, [], NOW, SETTINGS).actions  # turn 1's Job already cleaned up by its TTL
    assert isinstance(actions[0], StartTurn)
    assert actions[0].request.job_name == f"{NAME}-t2"


def test_tokens_and_cost_accumulate_once():
    conv = conversation(
        phase="Running", job=f"{NAME}-t2", turns=2, tokens={"input": 100, "output": 50}, costUSD=0.5
    )
    result = TurnResult(
        outcome=Outcome.DONE,
        answeredTs="1700000000.000001",
        tokens=Tokens(input=1, output=2, cache_read=3, cache_write=4),
        costUSD=0.25,
        pullRequest="https://github.test/o/r/pull/1",
    )
    finished = job(turn=2, complete=True, pods=(result_pod(result),))
    patch = status_patch(plan(conv, [finished], NOW, SETTINGS).actions)
    assert patch["tokens"] == {"input": 101, "output": 52, "cacheRead": 3, "cacheWrite": 4, "total": 160}
    assert patch["costUSD"] == 0.75
    assert patch["pullRequest"] == "https://github.test/o/r/pull/1"
    recorded = conversation(**(conv.status.to_api() | patch))
    assert not plan(recorded, [finished], NOW, SETTINGS)


def test_paused_turn_waits_for_continue():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    paused = TurnResult(outcome=Outcome.PAUSED, answeredTs="1700000000.000001")
    actions = plan(
        conv, [job(failed_reason="BackoffLimitExceeded", pods=(result_pod(paused, 10),))], NOW, SETTINGS
    ).actions
    assert status_patch(actions)["phase"] == "Waiting"
    assert any(isinstance(a, RecordEvent) and a.reason == "TurnPaused" for a in actions)
    assert not any(isinstance(a, Notify) for a in actions)  # the worker posted its own message


def test_deadline_without_a_pause_is_timed_out_and_told():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    killed = job(
        failed_reason="DeadlineExceeded", pods=(PodView(name="p", phase="Failed", reason="DeadlineExceeded"),)
    )
    actions = plan(conv, [killed], NOW, SETTINGS).actions
    assert status_patch(actions)["phase"] == "TimedOut"
    notify = next(a for a in actions if isinstance(a, Notify))
    assert notify.reaction == Reaction.PAUSED
    assert "5-minute limit" in notify.text


def test_failed_turn_is_not_retried_until_a_new_message():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1, attemptedTs="1700000000.000001")
    failed = TurnResult(outcome=Outcome.FAILED, error=TurnError(kind=ErrorKind.REPOSITORY, message="no repo"))
    finished = job(failed_reason="BackoffLimitExceeded", pods=(result_pod(failed, 1),))
    patch = status_patch(plan(conv, [finished], NOW, SETTINGS).actions)
    assert patch["phase"] == "Failed"
    assert patch["error"] == "no repo"
    after = conversation(**(conv.status.to_api() | patch))
    assert not plan(after, [finished], NOW, SETTINGS)
    newer = conversation(spec={"requestedTs": "1700000050.000000"}, **(conv.status.to_api() | patch))
    assert isinstance(plan(newer, [finished], NOW, SETTINGS).actions[0], StartTurn)


@pytest.mark.parametrize(
    ("pod", "error_fragment"),
    [
        (PodView(name="p", phase="Failed", terminated_reason="OOMKilled", exit_code=137), "out of memory"),
        (PodView(name="p", phase="Failed", terminated_reason="Error", exit_code=2), "exit code 2"),
    ],
)
def test_failures_without_a_report_are_explained(pod, error_fragment):
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    actions = plan(conv, [job(failed_reason="BackoffLimitExceeded", pods=(pod,))], NOW, SETTINGS).actions
    patch = status_patch(actions)
    assert patch["phase"] == "Failed"
    assert error_fragment in patch["error"]
    notify = next(a for a in actions if isinstance(a, Notify))
    assert notify.reaction == Reaction.FAILED
    assert "saved" in notify.text


def test_eviction_is_retried_once_then_fails():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    evicted = job(
        failed_reason="BackoffLimitExceeded",
        pods=(PodView(name="p", phase="Failed", reason="Evicted", disrupted=True),),
    )
    actions = plan(conv, [evicted], NOW, SETTINGS).actions
    start = actions[0]
    assert isinstance(start, StartTurn)
    assert start.request.job_name == f"{NAME}-t1-a2"
    assert start.request.turn == 1
    retried = conversation(**(conv.status.to_api() | status_patch(actions)))
    evicted_again = job(
        attempt=2,
        failed_reason="BackoffLimitExceeded",
        pods=(PodView(name="p2", phase="Failed", reason="Evicted"),),
    )
    final = plan(retried, [evicted, evicted_again], NOW, SETTINGS).actions
    assert status_patch(final)["phase"] == "Failed"
    assert "twice" in status_patch(final)["error"]


def test_deleted_pod_is_retried():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    gone = job(failed_reason="BackoffLimitExceeded", pods=())
    assert isinstance(plan(conv, [gone], NOW, SETTINGS).actions[0], StartTurn)


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"])
def test_a_job_that_can_never_start_is_deleted_and_explained(reason):
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    stuck = job(
        active=1, pods=(PodView(name="p", phase="Pending", waiting_reason=reason, waiting_message="m"),)
    )
    actions = plan(conv, [stuck], NOW, SETTINGS).actions
    assert kinds(actions)[:2] == ["DeleteJob", "PatchStatus"]
    assert reason in status_patch(actions)["error"]
    assert any(isinstance(a, Notify) for a in actions)


def test_cancel_deletes_the_running_job_once():
    cancel_at = NOW - timedelta(seconds=3)
    conv = conversation(
        spec={"cancelRequestedAt": cancel_at.isoformat()}, phase="Running", job=f"{NAME}-t1", turns=1
    )
    actions = plan(conv, [job(active=1)], NOW, SETTINGS).actions
    assert kinds(actions) == ["DeleteJob", "PatchStatus", "Notify", "RecordEvent"]
    assert isinstance(actions[0], DeleteJob)
    patch = status_patch(actions)
    assert patch["phase"] == "Cancelled"
    done = conversation(spec={"cancelRequestedAt": cancel_at.isoformat()}, **(conv.status.to_api() | patch))
    assert not plan(done, [job(deleting=True)], NOW, SETTINGS)


def test_capacity_queues_with_a_position_then_starts():
    settings = PlannerSettings(max_concurrent_jobs=2)
    conv = conversation()
    full = ClusterView(running_jobs=2, queue=("other", NAME))
    actions = plan(conv, [], NOW, settings, full).actions
    assert status_patch(actions) == {
        "phase": "Queued",
        "queuePosition": 2,
        "updatedAt": "2026-11-22T12:00:00Z",
    }
    queued = conversation(phase="Queued", queuePosition=2)
    assert not plan(queued, [], NOW, settings, full)
    assert isinstance(plan(queued, [], NOW, settings, ClusterView(running_jobs=1)).actions[0], StartTurn)


def test_idle_conversations_are_deleted_after_retention():
    old = NOW - timedelta(days=31)
    conv = conversation(
        phase="Waiting",
        answeredTs="1700000000.000001",
        attemptedTs="1700000000.000001",
        finishedAt=old.isoformat(),
    )
    actions = plan(conv, [], NOW, SETTINGS).actions
    assert isinstance(actions[0], DeleteConversation)
    recent = conversation(
        phase="Waiting",
        answeredTs="1700000000.000001",
        attemptedTs="1700000000.000001",
        finishedAt=(NOW - timedelta(days=1)).isoformat(),
    )
    assert not plan(recent, [], NOW, SETTINGS)


def test_bad_spec_fails_once_with_a_clear_reason():
    problem = spec_problems({"team": "T1", "channel": "general", "threadTs": "1.2", "user": "U1"})
    assert problem is not None
    assert "spec.channel is not valid" in problem
    assert "spec.requestedTs is missing" in problem
    assert "owner/name" in (spec_problems(SPEC | {"repository": "nope"}) or "")
    assert "older than spec.threadTs" in (spec_problems(SPEC | {"requestedTs": "1600000000.000000"}) or "")
    assert spec_problems(SPEC) is None
    actions = plan_invalid_spec(problem, {}, NOW).actions
    assert status_patch(actions)["phase"] == "Failed"
    assert not plan_invalid_spec(problem, {"phase": "Failed", "error": problem}, NOW)


def test_deleting_conversation_needs_nothing():
    assert not plan(conversation(), [job(active=1)], NOW, SETTINGS, deleting=True)


def test_a_stale_running_view_never_undoes_a_recorded_outcome():
    recorded = conversation(
        phase="Waiting",
        job=f"{NAME}-t1",
        turns=1,
        answeredTs="1700000000.000001",
        attemptedTs="1700000000.000001",
        tokens={"input": 10},
    )
    assert not plan(recorded, [job(active=1)], NOW, SETTINGS)


def test_a_finished_job_waits_for_its_pod_report():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1)
    finished = job(complete=True, finished_at=NOW, pods=(PodView(name="p", phase="Running"),))
    assert not plan(conv, [finished], NOW, SETTINGS)
    later = NOW + timedelta(minutes=5)
    assert status_patch(plan(conv, [finished], later, SETTINGS).actions)["phase"] == "Failed"


def test_a_recorded_running_job_that_vanished_fails_the_turn():
    conv = conversation(phase="Running", job=f"{NAME}-t1", turns=1, attemptedTs="1700000000.000001")
    actions = plan(conv, [], NOW, SETTINGS).actions
    assert status_patch(actions)["phase"] == "Failed"
    assert "deleted before it reported" in status_patch(actions)["error"]


def test_a_new_turn_waits_briefly_for_its_status_message():
    requested = "1795320000.000000"  # the Slack ts is the message's own time
    sent = datetime.fromtimestamp(1795320000, tz=UTC)
    conv = conversation(spec={"threadTs": "1795320000.000000", "requestedTs": requested})
    waiting = plan(conv, [], sent + timedelta(seconds=1), SETTINGS)
    assert not waiting
    assert waiting.recheck_after == timedelta(seconds=2)
    recorded = conversation(
        spec={
            "threadTs": "1795320000.000000",
            "requestedTs": requested,
            "statusMessageTs": "1795320000.500000",
        }
    )
    assert isinstance(plan(recorded, [], sent + timedelta(seconds=1), SETTINGS).actions[0], StartTurn)
    assert isinstance(plan(conv, [], sent + timedelta(seconds=4), SETTINGS).actions[0], StartTurn)
