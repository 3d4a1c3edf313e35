"""The real kopf operator (``peerbot.operator``) against the Kubernetes and Slack stand-ins.

The test plays the Job controller and the kubelet (nothing runs pods here): it starts, finishes, times
out and evicts the Jobs the operator creates, and checks what an operator of Peerbot sees
(``kubectl get conversations``, Events) and what a person sees in the Slack thread.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from slack_sdk import WebClient

from peerbot.conversation import ConversationSpec, Tokens
from peerbot.naming import conversation_name
from peerbot.operator.handlers import REGISTRY
from peerbot.operator.jobs import JobSettings, build_worker_job
from peerbot.planner import TurnRequest
from peerbot.result import ErrorKind, Outcome, TurnError, TurnResult
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn

NAMESPACE = "default"
WAIT = 10.0


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch, slack_standin: SlackStandIn, kubeconfig: Any) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_standin.bot_token)
    monkeypatch.setenv("SLACK_API_URL", slack_standin.api_url)
    monkeypatch.setenv("WORKER_IMAGE", "registry.test/peerbot-worker:test")
    monkeypatch.setenv("PEERBOT_NAMESPACE", NAMESPACE)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def run_operator(operator_env: None, kubernetes_standin: KubernetesStandIn) -> Callable[..., Any]:
    """Run ``kopf run -m peerbot.operator`` in a thread; returns a context manager."""
    # The chart creates the workers' ServiceAccount; the stand-in, like the real API, needs it for pods.
    kubernetes_standin.create(
        "serviceaccounts",
        {"metadata": {"name": "peerbot-worker"}, "automountServiceAccountToken": False},
        NAMESPACE,
    )

    @contextlib.contextmanager
    def run(**env: str) -> Iterator[KopfRunner]:
        failed: list[bool] = []
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            args = ["run", "--standalone", "--namespace", NAMESPACE, "-m", "peerbot.operator"]
            settings = kopf.OperatorSettings()
            # Tests stop the operator after every test: do not keep idle per-object workers around.
            settings.batching.idle_timeout = 0.2
            settings.batching.exit_timeout = 0.2
            with KopfRunner(args, registry=REGISTRY, settings=settings, timeout=10) as runner:
                kubernetes_standin.wait_for_watch("conversations", NAMESPACE, timeout=WAIT)
                kubernetes_standin.wait_for_watch("jobs", NAMESPACE, timeout=WAIT)
                try:
                    yield runner
                except BaseException:
                    failed.append(True)
                    raise
        if failed:
            print(runner.output)  # what the operator logged, shown with the failure
        assert runner.exception is None, runner.output

    return run


class Thread:
    """A Slack thread someone started by mentioning Peerbot, and its Conversation."""

    def __init__(
        self, slack: SlackStandIn, kube: KubernetesStandIn, text: str = "please fix the tests"
    ) -> None:
        self.slack = slack
        self.kube = kube
        self.channel = slack.public_channel
        parent = slack.post_message(slack.human, self.channel, f"{slack.mention} {text}")
        self.thread_ts = parent.ts
        self.name = conversation_name(slack.team_id, self.channel, self.thread_ts)

    def post_status_message(self) -> str:
        """What the dispatcher does right after recording a request: post the status message."""
        client = WebClient(token=self.slack.bot_token, base_url=self.slack.api_url)
        return str(
            client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, text="Queued")["ts"]
        )

    def create(self, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "peerbot.ai/v1",
            "kind": "Conversation",
            "metadata": {"name": self.name},
            "spec": {
                "team": self.slack.team_id,
                "channel": self.channel,
                "threadTs": self.thread_ts,
                "user": self.slack.human,
                "requestedTs": self.thread_ts,
                "statusMessageTs": self.post_status_message(),
            }
            | spec,
        }
        return self.kube.create("conversations", body, NAMESPACE)

    def reply(self, text: str) -> str:
        message = self.slack.post_message(self.slack.human, self.channel, text, thread_ts=self.thread_ts)
        self.kube.patch(
            "conversations",
            NAMESPACE,
            self.name,
            {"spec": {"requestedTs": message.ts, "statusMessageTs": self.post_status_message()}},
        )
        return message.ts

    def job(self, turn: int, attempt: int = 1) -> str:
        return f"{self.name}-t{turn}" + (f"-a{attempt}" if attempt > 1 else "")

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def check(obj: dict[str, Any] | None) -> Any:
            return obj if obj and predicate(obj.get("status") or {}) else None

        conversation = self.kube.wait_for("conversations", NAMESPACE, self.name, check, timeout=WAIT)
        status: dict[str, Any] = conversation["status"]
        return status

    def wait_job(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = self.kube.wait_for("jobs", NAMESPACE, name, lambda obj: obj, timeout=WAIT)
        return job

    def thread_text(self) -> str:
        return self.slack.render_thread(self.channel, self.thread_ts)

    def wait_thread(self, fragment: str) -> None:
        self.slack.wait_until(lambda: fragment in self.thread_text(), timeout=WAIT)

    def wait_reaction(self, name: str) -> None:
        self.slack.wait_until(
            lambda: name in self.slack.message(self.channel, self.thread_ts).reactions, timeout=WAIT
        )


@pytest.fixture
def thread(slack_standin: SlackStandIn, kubernetes_standin: KubernetesStandIn) -> Thread:
    return Thread(slack_standin, kubernetes_standin)


def done(answered: str, **extra: Any) -> str:
    return TurnResult(outcome=Outcome.DONE, answeredTs=answered, **extra).to_document()


def wait_events(kube: KubernetesStandIn, name: str, reasons: set[str]) -> None:
    """Wait (bounded) until Events with all ``reasons`` were posted about ``name``."""
    deadline = time.monotonic() + WAIT
    while not reasons <= {e["reason"] for e in kube.events(NAMESPACE, involved_name=name)}:
        assert time.monotonic() < deadline, f"no Events {reasons} about {name}"
        time.sleep(0.05)


def jobs_of(kube: KubernetesStandIn, name: str) -> list[str]:
    return sorted(
        job["metadata"]["name"]
        for job in kube.objects("jobs", NAMESPACE, label_selector=f"peerbot.ai/conversation={name}")
    )


def test_first_turn_runs_and_kubectl_shows_it(run_operator, thread, kubernetes_standin, kubectl):
    with run_operator():
        thread.create()
        job = thread.wait_job(thread.job(1))
        status = thread.wait_status(lambda s: s.get("phase") == "Running")
        assert status["job"] == thread.job(1)
        assert status["turns"] == 1

        # The Job the operator really created follows the contract.
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "registry.test/peerbot-worker:test"
        assert pod["automountServiceAccountToken"] is False
        assert job["spec"]["activeDeadlineSeconds"] == 300
        assert job["spec"]["backoffLimit"] == 0
        assert job["metadata"]["ownerReferences"][0]["name"] == thread.name
        env = {e["name"]: e for e in container["env"]}
        assert "valueFrom" in env["SLACK_BOT_TOKEN"]
        assert env["PEERBOT_THREAD_TS"]["value"] == thread.thread_ts
        assert "please fix the tests" not in json.dumps(job)

        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        tokens = Tokens(input=1200, output=300, cacheRead=500, cacheWrite=100)
        kubernetes_standin.finish_job(
            NAMESPACE, thread.job(1), termination_message=done(thread.thread_ts, tokens=tokens, costUSD=0.02)
        )
        status = thread.wait_status(lambda s: s.get("phase") == "Waiting")
        assert status["answeredTs"] == thread.thread_ts
        assert status["tokens"]["total"] == 2100

        # kopf posts Events in the background: wait for them while the operator still runs.
        wait_events(kubernetes_standin, thread.name, {"TurnStarted", "TurnAnswered"})

    table = kubectl("get", "conversations").stdout
    header, row = table.strip().splitlines()
    assert header.split() == ["NAME", "CHANNEL", "USER", "PHASE", "TURNS", "TOKENS", "JOB", "AGE"]
    assert row.split()[:7] == [
        thread.name,
        thread.channel,
        thread.slack.human,
        "Waiting",
        "1",
        "2100",
        thread.job(1),
    ]


def test_follow_up_during_a_run_becomes_the_next_turn(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        follow_up = thread.reply("also update the README")
        thread.wait_status(lambda s: s.get("job") == thread.job(1))
        assert jobs_of(kubernetes_standin, thread.name) == [thread.job(1)]  # one Job at a time

        kubernetes_standin.finish_job(NAMESPACE, thread.job(1), termination_message=done(thread.thread_ts))
        job = thread.wait_job(thread.job(2))
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["PEERBOT_REQUESTED_TS"] == follow_up
        assert env["PEERBOT_ANSWERED_TS"] == thread.thread_ts
        status = thread.wait_status(lambda s: s.get("job") == thread.job(2) and s.get("phase") == "Running")
        assert status["turns"] == 2


def test_follow_up_after_the_answer_starts_a_new_turn(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.finish_job(NAMESPACE, thread.job(1), termination_message=done(thread.thread_ts))
        thread.wait_status(lambda s: s.get("phase") == "Waiting")
        thread.reply("thanks! one more thing")
        thread.wait_job(thread.job(2))
        assert jobs_of(kubernetes_standin, thread.name) == [thread.job(1), thread.job(2)]


def test_deadline_is_timed_out_and_told_in_the_thread(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.time_out_job(NAMESPACE, thread.job(1))
        status = thread.wait_status(lambda s: s.get("phase") == "TimedOut")
        assert "5-minute limit" in status["error"]
        thread.wait_thread("5-minute limit")
        thread.wait_reaction("hourglass_flowing_sand")


def test_out_of_memory_is_explained(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.finish_job(
            NAMESPACE, thread.job(1), succeeded=False, exit_code=137, reason="OOMKilled"
        )
        status = thread.wait_status(lambda s: s.get("phase") == "Failed")
        assert "out of memory" in status["error"]
        thread.wait_thread("ran out of memory")
        thread.wait_reaction("x")


def test_worker_reported_failure_is_recorded_without_a_second_message(
    run_operator, thread, kubernetes_standin
):
    failure = TurnResult(
        outcome=Outcome.FAILED,
        error=TurnError(kind=ErrorKind.REPOSITORY, message="acme/missing does not exist"),
    ).to_document()
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.finish_job(
            NAMESPACE, thread.job(1), succeeded=False, exit_code=1, termination_message=failure
        )
        status = thread.wait_status(lambda s: s.get("phase") == "Failed")
        assert status["error"] == "acme/missing does not exist"
    # The mention and its status message only: the worker speaks for itself, the operator adds nothing.
    assert len(thread.slack.thread(thread.channel, thread.thread_ts)) == 2


def test_image_pull_failure_is_failed_at_once(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        pod = kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "registry.test: not found"}}
        kubernetes_standin.patch(
            "pods",
            NAMESPACE,
            pod["metadata"]["name"],
            {
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": "worker",
                            "ready": False,
                            "restartCount": 0,
                            "image": "x",
                            "imageID": "",
                            "state": waiting,
                        }
                    ],
                }
            },
            subresource="status",
        )
        status = thread.wait_status(lambda s: s.get("phase") == "Failed")
        assert "could not pull the worker image" in status["error"]
        kubernetes_standin.wait_for(
            "jobs",
            NAMESPACE,
            thread.job(1),
            lambda obj: obj is None or obj["metadata"].get("deletionTimestamp"),
            timeout=WAIT,
        )
        thread.wait_thread("could not start a worker")


def test_eviction_is_retried_once(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        pod = kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.patch(
            "pods",
            NAMESPACE,
            pod["metadata"]["name"],
            {"status": {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}},
            subresource="status",
        )
        kubernetes_standin.patch(
            "jobs",
            NAMESPACE,
            thread.job(1),
            {
                "status": {
                    "active": 0,
                    "failed": 1,
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "lastTransitionTime": "2026-11-22T12:00:00Z",
                            "lastProbeTime": "2026-11-22T12:00:00Z",
                        }
                    ],
                }
            },
            subresource="status",
        )
        thread.wait_job(thread.job(1, attempt=2))
        status = thread.wait_status(lambda s: s.get("job") == thread.job(1, attempt=2))
        assert status["phase"] == "Running"
        assert status["turns"] == 1


def test_cancel_deletes_the_running_job(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        cancel_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        kubernetes_standin.patch(
            "conversations", NAMESPACE, thread.name, {"spec": {"cancelRequestedAt": cancel_at}}
        )
        thread.wait_status(lambda s: s.get("phase") == "Cancelled")
        kubernetes_standin.wait_for(
            "jobs",
            NAMESPACE,
            thread.job(1),
            lambda obj: obj is None or obj["metadata"].get("deletionTimestamp"),
            timeout=WAIT,
        )
        thread.wait_thread("Stopped.")
        # A new reply after the cancel starts a new turn.
        thread.reply("ok, try again")
        thread.wait_job(thread.job(2))


def test_capacity_queue(run_operator, slack_standin, kubernetes_standin):
    first = Thread(slack_standin, kubernetes_standin, "first")
    second = Thread(slack_standin, kubernetes_standin, "second")
    with run_operator(MAX_CONCURRENT_JOBS="1"):
        first.create()
        first.wait_job(first.job(1))
        kubernetes_standin.start_job(NAMESPACE, first.job(1))
        second.create()
        status = second.wait_status(lambda s: s.get("phase") == "Queued")
        assert status["queuePosition"] == 1
        assert jobs_of(kubernetes_standin, second.name) == []
        kubernetes_standin.finish_job(NAMESPACE, first.job(1), termination_message=done(first.thread_ts))
        second.wait_job(second.job(1))
        second.wait_status(lambda s: s.get("phase") == "Running")


def test_restart_after_creating_a_job_does_not_duplicate_it(run_operator, thread, kubernetes_standin):
    """The operator stopped after creating turn 1's Job but before recording it: it adopts the Job."""
    thread.create()
    spec = ConversationSpec.model_validate(
        kubernetes_standin.get("conversations", NAMESPACE, thread.name)["spec"]
    )
    uid = kubernetes_standin.get("conversations", NAMESPACE, thread.name)["metadata"]["uid"]
    request = TurnRequest(
        conversation=thread.name, turn=1, attempt=1, job_name=thread.job(1), spec=spec, answered_ts=None
    )
    settings = JobSettings(
        namespace=NAMESPACE,
        image="registry.test/peerbot-worker:test",
        service_account="peerbot-worker",
        secret_name="peerbot-secrets",
        cpu="1",
        memory="1Gi",
        session_timeout_minutes=5,
    )
    kubernetes_standin.create("jobs", build_worker_job(request, settings, uid, datetime.now(UTC)), NAMESPACE)
    with run_operator():
        status = thread.wait_status(lambda s: s.get("job") == thread.job(1))
        assert status["phase"] == "Running"
        assert jobs_of(kubernetes_standin, thread.name) == [thread.job(1)]
        wait_events(kubernetes_standin, thread.name, {"Adopted"})


def test_bad_spec_fails_once_without_retrying(run_operator, thread, kubernetes_standin):
    with run_operator() as runner:
        thread.create(requestedTs="1000000000.000001")  # older than the thread: not in it
        status = thread.wait_status(lambda s: s.get("phase") == "Failed")
        assert "older than spec.threadTs" in status["error"]
    assert jobs_of(kubernetes_standin, thread.name) == []
    assert "cannot be acted on" in runner.output
    assert "will try again" not in runner.output  # a permanent error, never a retry loop


def test_deleting_a_conversation_cleans_up_its_jobs(run_operator, thread, kubernetes_standin):
    with run_operator():
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.delete("conversations", NAMESPACE, thread.name)
        # kopf removes its finalizer (it keeps one while timers run), then the garbage collector runs.
        kubernetes_standin.wait_for(
            "conversations", NAMESPACE, thread.name, lambda obj: obj is None, timeout=WAIT
        )
        kubernetes_standin.collect_garbage()
        assert jobs_of(kubernetes_standin, thread.name) == []


def test_idle_conversations_are_deleted_after_retention(run_operator, thread, kubernetes_standin):
    with run_operator(CONVERSATION_RETENTION_DAYS="0.00001"):  # under a second
        thread.create()
        thread.wait_job(thread.job(1))
        kubernetes_standin.start_job(NAMESPACE, thread.job(1))
        kubernetes_standin.finish_job(NAMESPACE, thread.job(1), termination_message=done(thread.thread_ts))
        thread.wait_status(lambda s: s.get("phase") == "Waiting")
        # Any change (here an annotation) or the hourly sweep re-plans it; past the retention it goes.
        deadline = time.monotonic() + WAIT
        touches = 0
        while kubernetes_standin.get("conversations", NAMESPACE, thread.name) is not None:
            assert time.monotonic() < deadline, "the idle Conversation was not deleted after its retention"
            touches += 1
            with contextlib.suppress(Exception):
                kubernetes_standin.patch(
                    "conversations",
                    NAMESPACE,
                    thread.name,
                    {"metadata": {"annotations": {"touched": str(touches)}}},
                )
            time.sleep(0.25)  # the retention is a time: a second must pass
