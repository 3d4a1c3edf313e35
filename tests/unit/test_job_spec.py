"""The worker Job manifest: least privilege, pointers only, limits from settings."""

import json
from datetime import UTC, datetime

import pytest

from peerbot.conversation import ConversationSpec
from peerbot.operator.jobs import JobSettings, build_worker_job, job_view, pod_view
from peerbot.planner import TurnRequest
from peerbot.result import Outcome, TurnResult

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
SETTINGS = JobSettings(
    namespace="peerbot",
    image="registry.example/peerbot-worker:1.2.3",
    service_account="peerbot-worker",
    secret_name="peerbot-secrets",
    cpu="2000m",
    memory="4Gi",
    session_timeout_minutes=5,
    config_map="peerbot-worker-config",
)
REQUEST = TurnRequest(
    conversation="t024be7ld-c01abcdef-1700000000-123456",
    turn=3,
    attempt=1,
    job_name="t024be7ld-c01abcdef-1700000000-123456-t3",
    spec=SPEC,
    answered_ts="1700000001.000000",
)


@pytest.fixture
def job():
    return build_worker_job(REQUEST, SETTINGS, owner_uid="uid-123", now=NOW)


def test_job_basics(job):
    assert job["metadata"]["name"] == REQUEST.job_name
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 300
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "peerbot-worker"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == SETTINGS.image
    assert container["resources"]["requests"]["cpu"] == "2000m"
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert container["terminationMessagePath"] == "/dev/termination-log"


def test_owner_reference_and_labels(job):
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "peerbot.ai/v1",
        "kind": "Conversation",
        "name": REQUEST.conversation,
        "uid": "uid-123",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = job["metadata"]["labels"]
    assert labels["peerbot.ai/team"] == "T024BE7LD"
    assert labels["peerbot.ai/channel"] == "C01ABCDEF"
    assert labels["peerbot.ai/user"] == "U01ABCDEF"
    assert labels["peerbot.ai/turn"] == "3"
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_restricted_security_context(job):
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = pod["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/workspace" in mounts
    assert "/tmp" in mounts


def test_secrets_only_by_reference_and_only_pointers(job):
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    for secret in ("SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"):
        assert "value" not in by_name[secret]
        assert by_name[secret]["valueFrom"]["secretKeyRef"]["name"] == "peerbot-secrets"
    assert by_name["PEERBOT_REQUESTED_TS"]["value"] == "1700000042.000100"
    assert by_name["PEERBOT_ANSWERED_TS"]["value"] == "1700000001.000000"
    assert by_name["PEERBOT_STATUS_MESSAGE_TS"]["value"] == "1700000043.000200"
    assert by_name["PEERBOT_REPOSITORY"]["value"] == "acme/api"
    assert by_name["PEERBOT_DEADLINE"]["value"] == "2026-11-22T12:05:00Z"
    # Every plain value is a pointer or a setting: short, no spaces, nothing that reads like prose.
    for item in env:
        if "value" in item:
            assert " " not in item["value"]
            assert len(item["value"]) < 80


def test_same_inputs_same_manifest():
    a = build_worker_job(REQUEST, SETTINGS, owner_uid="u", now=NOW)
    b = build_worker_job(REQUEST, SETTINGS, owner_uid="u", now=NOW)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_spot_capacity_is_optional():
    from dataclasses import replace

    job = build_worker_job(REQUEST, replace(SETTINGS, spot=True), owner_uid="u", now=NOW)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}


def test_job_view_reads_conditions_pods_and_result(job):
    job["metadata"]["creationTimestamp"] = "2026-11-22T12:00:00Z"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    result = TurnResult(outcome=Outcome.DONE, answeredTs="1700000042.000100")
    pod = {
        "metadata": {"name": "p1", "creationTimestamp": "2026-11-22T12:00:01Z"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {
                        "terminated": {"reason": "Completed", "exitCode": 0, "message": result.to_document()}
                    },
                }
            ],
        },
    }
    view = job_view(job, [pod])
    assert view is not None
    assert (view.turn, view.attempt, view.complete, view.finished) == (3, 1, True, True)
    assert view.requested_ts == "1700000042.000100"
    assert view.result() == result


def test_pod_view_sees_evictions_and_pull_errors():
    evicted = pod_view({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted"}})
    assert evicted.reason == "Evicted"
    pulling = pod_view(
        {
            "metadata": {"name": "p"},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{"name": "worker", "state": {"waiting": {"reason": "ErrImagePull"}}}],
            },
        }
    )
    assert pulling.waiting_reason == "ErrImagePull"


def test_a_job_without_turn_label_is_not_ours():
    assert job_view({"metadata": {"name": "x", "labels": {}}}, []) is None


def test_result_document_fits_the_termination_message():
    from peerbot.result import ErrorKind, TurnError

    huge = TurnResult(outcome=Outcome.FAILED, error=TurnError(kind=ErrorKind.INTERNAL, message="é" * 10_000))
    document = huge.to_document()
    assert len(document.encode()) <= 4096
    parsed = TurnResult.parse(document)
    assert parsed is not None
    assert parsed.error is not None
    assert parsed.error.message.endswith("…")
    assert TurnResult.parse("not json") is None
    assert TurnResult.parse("") is None
