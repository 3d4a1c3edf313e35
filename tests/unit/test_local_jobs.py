"""A local turn as the planner sees it, and the environment its worker gets (pure, no process).

The planner is the operator's own: these tests feed it what the local runner shows it and check it
decides exactly what it decides for a Job and its pod in a cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from peerbot.conversation import Conversation
from peerbot.local.jobs import (
    DEADLINE_EXCEEDED,
    NODE_LOST,
    JobRecord,
    JobState,
    exit_code_for,
    exit_code_of,
    job_view,
    worker_environment,
)
from peerbot.operator.jobs import JobSettings, build_worker_job
from peerbot.planner import Notify, PatchStatus, PlannerSettings, StartTurn, TurnRequest, plan
from peerbot.result import Outcome, TurnResult

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NAME = "t1-c1-1700000000-000100"
TS = "1700000000.000100"
SPEC = {"team": "T1", "channel": "C1", "threadTs": TS, "user": "U1", "requestedTs": TS}


def conversation() -> Conversation:
    return Conversation.model_validate(
        {
            "metadata": {"name": NAME},
            "spec": SPEC,
            "status": {"phase": "Running", "job": f"{NAME}-t1", "turns": 1, "attemptedTs": TS},
        }
    )


def record(**changes: object) -> JobRecord:
    base = JobRecord(
        name=f"{NAME}-t1",
        conversation=NAME,
        turn=1,
        requested_ts=TS,
        spec=SPEC,
        created_at=NOW - timedelta(minutes=1),
        runs=1,
        finished_at=NOW,
        state=JobState.FINISHED,
    )
    return base.model_copy(update=changes)


def decide(view_of: JobRecord) -> list[object]:
    return list(plan(conversation(), [job_view(view_of)], NOW, PlannerSettings()).actions)


def document(outcome: Outcome) -> str:
    return TurnResult(outcome=outcome, answeredTs=TS if outcome != Outcome.FAILED else None).to_document()


def test_a_running_or_interrupted_turn_is_left_alone() -> None:
    assert decide(record(state=JobState.RUNNING, finished_at=None)) == []
    assert decide(record(state=JobState.INTERRUPTED, finished_at=None)) == []


@pytest.mark.parametrize(
    ("changes", "phase"),
    [
        ({"exit_code": 0, "result": document(Outcome.DONE)}, "Waiting"),
        ({"exit_code": 10, "result": document(Outcome.PAUSED)}, "Waiting"),
        ({"exit_code": 1, "result": document(Outcome.FAILED)}, "Failed"),
        # Paused on its own just before the runner's kill at the deadline: the result wins.
        ({"exit_code": 10, "reason": DEADLINE_EXCEEDED, "result": document(Outcome.PAUSED)}, "Waiting"),
    ],
)
def test_the_workers_own_result_decides(changes: dict[str, object], phase: str) -> None:
    actions = decide(record(**changes))
    patches = [a for a in actions if isinstance(a, PatchStatus)]
    assert patches[0].patch["phase"] == phase
    assert not [a for a in actions if isinstance(a, Notify)]  # the worker told the thread itself


def test_killed_at_the_deadline_without_a_result_is_timed_out_and_said_so() -> None:
    actions = decide(record(exit_code=137, reason=DEADLINE_EXCEEDED))
    assert next(a for a in actions if isinstance(a, PatchStatus)).patch["phase"] == "TimedOut"
    assert "5-minute limit" in next(a for a in actions if isinstance(a, Notify)).text


def test_a_crash_without_a_result_is_failed_with_its_exit_code() -> None:
    actions = decide(record(exit_code=139))
    assert next(a for a in actions if isinstance(a, PatchStatus)).patch["phase"] == "Failed"
    assert "exit code 139" in next(a for a in actions if isinstance(a, Notify)).text


def test_a_worker_that_vanished_unseen_is_a_lost_pod_retried_once() -> None:
    (start, patch, _event) = decide(record(reason=NODE_LOST))
    assert isinstance(start, StartTurn)
    assert (start.request.job_name, start.request.attempt) == (f"{NAME}-t1-a2", 2)
    assert isinstance(patch, PatchStatus)
    assert patch.patch["phase"] == "Running"
    second = record(name=f"{NAME}-t1-a2", attempt=2, reason=NODE_LOST)
    status = {"phase": "Running", "job": second.name, "turns": 1, "attemptedTs": TS}
    again = Conversation.model_validate({"metadata": {"name": NAME}, "spec": SPEC, "status": status})
    actions = plan(again, [job_view(second)], NOW, PlannerSettings()).actions
    assert next(a for a in actions if isinstance(a, PatchStatus)).patch["phase"] == "Failed"


def test_a_job_being_deleted_is_not_running() -> None:
    view = job_view(record(state=JobState.DELETING, finished_at=None))
    assert view.deleting
    assert not view.running


def test_exit_codes_read_as_a_containers() -> None:
    assert exit_code_of(-15) == 143
    assert exit_code_of(-9) == 137
    assert exit_code_of(10) == 10
    assert exit_code_for(TurnResult(outcome=Outcome.PAUSED)) == 10
    assert exit_code_for(TurnResult(outcome=Outcome.FAILED)) == 1


def test_a_restarted_turn_takes_the_status_message_posted_after_it_began() -> None:
    late = {**SPEC, "statusMessageTs": "1700000000.000200"}
    assert record().request(late).spec.status_message_ts == "1700000000.000200"
    newer = {**late, "requestedTs": "1700000000.000900"}
    assert record().request(newer).spec.status_message_ts is None  # for another message: not ours


def test_the_worker_gets_the_operators_pointers_and_this_machines_folders(tmp_path: Path) -> None:
    request: TurnRequest = record(answered_ts="1700000000.000050").request()
    deadline = NOW + timedelta(minutes=5)
    env = worker_environment(
        request,
        base={
            "PATH": "/usr/bin",
            "SLACK_BOT_TOKEN": "xoxb-1",
            "SLACK_APP_TOKEN": "xapp-1",
            "PEERBOT_REPOSITORY": "stale/value",
        },
        now=NOW,
        deadline=deadline,
        timeout_minutes=5,
        session_dir=tmp_path / "sessions",
        workspace=tmp_path / "ws",
        result_file=tmp_path / "r.json",
        repositories_dir=tmp_path / "repositories",
    )
    job = build_worker_job(request, _settings(), owner_uid="", now=NOW)
    operator_pointers = {
        entry["name"]: entry["value"]
        for entry in job["spec"]["template"]["spec"]["containers"][0]["env"]
        if entry["name"].startswith("PEERBOT_")
    }
    assert {name: env[name] for name in operator_pointers} == operator_pointers
    assert env["PEERBOT_ANSWERED_TS"] == "1700000000.000050"
    assert env["PEERBOT_REPOSITORY"] == ""  # the stale value from the environment is replaced
    assert env["PEERBOT_DEADLINE"] == "2025-06-01T12:05:00Z"
    assert env["SESSION_STORE"] == "local"
    assert env["HOME"] == str(tmp_path / "ws" / "home")
    assert env["SLACK_BOT_TOKEN"] == "xoxb-1"
    assert "SLACK_APP_TOKEN" not in env


@pytest.mark.parametrize(
    ("base", "host"),
    [
        ({}, "local"),  # no GITHUB_TOKEN: repositories stay on this machine
        ({"GITHUB_TOKEN": "  "}, "local"),
        ({"GITHUB_TOKEN": "ghp_x"}, None),  # GitHub: the worker's default
        ({"GITHUB_TOKEN": "ghp_x", "REPOSITORY_HOST": "local"}, "local"),  # chosen: local even with a token
        ({"REPOSITORY_HOST": "github"}, "github"),  # chosen: GitHub (the worker then asks for the token)
    ],
)
def test_without_a_github_token_the_worker_keeps_repositories_in_local_git(
    tmp_path: Path, base: dict[str, str], host: str | None
) -> None:
    env = worker_environment(
        record().request(),
        base={"PATH": "/usr/bin", "REPOSITORIES_DIR": "elsewhere", **base},
        now=NOW,
        deadline=NOW + timedelta(minutes=5),
        timeout_minutes=5,
        session_dir=tmp_path / "sessions",
        workspace=tmp_path / "ws",
        result_file=tmp_path / "r.json",
        repositories_dir=tmp_path / "repositories",
    )
    assert env.get("REPOSITORY_HOST") == host
    expected = str(tmp_path / "repositories") if host == "local" else "elsewhere"
    assert env["REPOSITORIES_DIR"] == expected


def _settings() -> JobSettings:
    return JobSettings(
        namespace="x",
        image="x",
        service_account="x",
        secret_name="x",
        cpu="1",
        memory="1Gi",
        session_timeout_minutes=5,
    )
