"""``peerbot demo``: the whole flow offline, checked on its transcript and on what it leaves behind.

The main test runs the demo as ``peerbot demo`` runs it (only Claude's scripted steps stream faster) and
checks what a newcomer would see: the mention, the status message edited live, the reactions, the final
answer with its links, ``kubectl get conversations``, and the follow-up continuing the same session (on
what the scripted Claude received). It also checks the promises: under 30 seconds, nothing left running,
nothing written outside the temporary folder.

A stub worker checks the kubelet stand-in's side (the Job's environment, resolved as the kubelet would)
and that a failing worker stops the demo with a clear message. The kubelet stand-in's strict points (as a
real kubelet: a missing Secret, ConfigMap or key keeps the container from starting, with the kubelet's own
wording) are checked on its pure helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peerbot import cli
from peerbot.demo import add_arguments, story
from peerbot.demo import run as demo_run
from peerbot.demo.flow import Demo, DemoOptions, find_kubectl
from peerbot.testing.kubelet import (
    ContainerConfigError,
    LocalImage,
    LocalKubelet,
    container_environment,
    map_paths,
    termination_message,
)
from peerbot.testing.kubernetes import KubernetesStandIn

#: The issue's promise.
DEMO_LIMIT_SECONDS = 30.0
#: Claude's scripted steps stream this long in the tests (the demo's own default is slower, to be watched).
TEST_STEP_SECONDS = 0.1


@dataclass
class Sandbox:
    """Where the demo may write (``TMPDIR``) and a ``HOME`` it must not touch."""

    temp: Path
    home: Path


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    temp, home = tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    home.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return Sandbox(temp, home)


def processes_using(path: Path) -> list[str]:
    """Processes (other than this one) whose command line, environment or folder mention ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environment = (entry / "environ").read_bytes().decode(errors="replace")
            folder = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, a zombie, or not ours to read
            continue
        if str(path) in command or str(path) in environment or folder.startswith(str(path)):
            found.append(f"{entry.name}: {command.strip()}")
    return found


def run_demo(sandbox: Sandbox, **options: Any) -> tuple[Demo, int, float]:
    """Run the demo in this process; check it left no thread, no process and no file behind."""
    threads = set(threading.enumerate())
    started = time.monotonic()
    demo = Demo(DemoOptions(echo=None, step_seconds=TEST_STEP_SECONDS, **options))
    code = demo.run()
    seconds = time.monotonic() - started
    print(demo.transcript.text)  # shown when the test fails
    leftover_threads = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert leftover_threads == [], f"the demo left threads running: {leftover_threads}"
    assert processes_using(sandbox.temp) == [], "the demo left processes running"
    assert list(sandbox.temp.iterdir()) == [], "the demo left files in its temporary folder"
    assert list(sandbox.home.iterdir()) == [], "the demo wrote into HOME"
    return demo, code, seconds


def section(transcript: str, title: str) -> str:
    """The transcript from the section whose title starts with ``title`` up to the next section."""
    start = transcript.index(f"\n{title}")
    following = re.search(r"\n\n\d\. ", transcript[start + 1 :])
    return transcript[start : start + 1 + following.start()] if following else transcript[start:]


@pytest.mark.slow
def test_the_demo_shows_the_whole_flow_live_and_leaves_nothing_behind(sandbox: Sandbox) -> None:
    demo, code, seconds = run_demo(sandbox, transcript=sandbox.home.parent / "transcript.txt")
    text = demo.transcript.text

    assert code == 0, demo.failure
    assert seconds < DEMO_LIMIT_SECONDS
    assert (sandbox.home.parent / "transcript.txt").read_text(encoding="utf-8") == text

    # The header says what is real and what stands in; the footer how to run it for real.
    assert "real      operator" in text
    for part in ("Slack", "Kubernetes API", "kubelet", "GitHub", "Cloud Storage", "Claude"):
        assert re.search(rf"stand-in  {part}\b", text), part
    assert "peerbot local" in text
    assert "docs/deploy-gke.md" in text

    # The mention, delivered to the real dispatcher, becomes a Conversation, a Job and a local worker.
    first = section(text, "1. alice asks Peerbot")
    assert "│ alice: @peerbot the checkout tests fail" in first
    assert "· dispatcher: got the app_mention over Socket Mode, recorded Conversation" in first
    assert re.search(r"· operator: created Job \S+-t1\b", first)
    assert "runs it as a local process: peerbot worker" in first
    # Live: the dispatcher's status message, then the worker's edits of it, and the reactions.
    assert "│ peerbot: 🕒 *Queued: starting a worker…*" in first
    # (The worker edits the dispatcher's message, or posts its own when the operator created the Job
    # before the dispatcher recorded the message: then the first "Working" is a new message.)
    assert re.search(r"│ peerbot ✎ ⚙️ Working: .+ \(\d+s elapsed\)", first)
    assert "│ peerbot ✎ ✅ Done: opened pull request #1" in first
    for step in ("✓ reading pricing.py", "✓ editing pricing.py", "✓ running `python3 -m unittest"):
        assert step in first  # the status message's checklist, as the thread shows it at the end
    for reaction in ("+👀 :eyes:", "+⚙️ :gear:", "−⚙️ :gear:", "+✅ :white_check_mark:"):
        assert reaction in first
    # The final answer, with the branch and pull request links, and the operator's record of it.
    assert "│ peerbot: Fixed the bug in `total()`" in first
    assert "Both tests pass now" in first
    assert re.search(r"peerbot/\S+ +http://127\.0\.0\.1:\d+/peerbot-community/\S+/tree/peerbot/", first)
    assert re.search(r"#1 +http://127\.0\.0\.1:\d+/peerbot-community/\S+/pull/1\b", first)
    assert "the worker exited with 0 (done)" in first
    assert "· operator: read the worker's result: Conversation Waiting, turn 1" in first

    # kubectl get conversations: the real kubectl's table, with the Conversation's row.
    if find_kubectl() is None:
        assert "kubectl is not installed here" in text
    else:
        assert len(demo.kubectl_tables) == 2
        for table, turns in zip(demo.kubectl_tables, ("1", "2"), strict=True):
            header, row = table.splitlines()
            assert header.split() == ["NAME", "CHANNEL", "USER", "PHASE", "TURNS", "TOKENS", "JOB", "AGE"]
            name, _channel, _user, phase, shown_turns, tokens, job, _age = row.split()
            assert (phase, shown_turns) == ("Waiting", turns)
            assert int(tokens) > 0
            assert job == f"{name}-t{turns}"
        assert "$ kubectl get conversations" in section(text, "2. kubectl get conversations")

    # The follow-up: a reply without a mention continues the thread's session.
    second = section(text, "3. alice replies in the thread")
    assert f"│ alice: {story.FOLLOW_UP}" in second
    assert re.search(r"· operator: created Job \S+-t2\b", second)
    assert "│ peerbot: Added `test_full_discount_is_free`" in second
    assert "All 3 tests pass" in second
    assert "│ peerbot ✎ ✅ Done: updated pull request #1" in second
    assert "Conversation Waiting, turn 2" in second
    assert "the same session continued" in second

    # What Claude really received: the follow-up's first request holds the whole first turn.
    requests = demo.claude_requests
    assert len(requests) == len(story.first_turn()) + len(story.second_turn())
    turn_one, follow_up = requests[: len(story.first_turn())], requests[len(story.first_turn())]
    history = json.dumps(follow_up.messages)
    assert "the checkout tests fail" in history  # alice's first message
    assert "return round(subtotal * (1 - discount), 2)" in history  # the fix, as a tool call
    assert "Ran 2 tests" in history  # the tests' output, as a tool result
    assert "Fixed the bug in `total()`" in history  # the first answer
    assert story.FOLLOW_UP in json.dumps(follow_up.messages[-1])
    assert len(follow_up.messages) > len(turn_one[-1].messages)
    assert demo.continuity is not None
    assert demo.continuity.continued
    assert demo.continuity.carried_messages == len(turn_one[-1].messages) + 1


#: A worker that checks the environment the kubelet stand-in gave it, reports it in a failed result, and
#: exits 1, as the real worker does when a turn fails.
STUB_WORKER = """
import json, os, sys
env = os.environ
tokens = [n for n in ("SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY", "GITHUB_TOKEN") if env.get(n)]
endpoints = [
    n for n in ("SLACK_API_URL", "ANTHROPIC_BASE_URL", "GITHUB_API_URL", "STORAGE_EMULATOR_HOST")
    if env.get(n, "").startswith("http://127.0.0.1:")
]
pod = os.getcwd().split("/volumes/")[0]
folders = [n for n in ("HOME", "TMPDIR", "PEERBOT_RESULT_FILE") if env[n].startswith(pod)]
message = (
    f"stub worker: {len(tokens)}/3 tokens, {len(endpoints)}/4 endpoints, {len(folders)}/3 folders in "
    f"the pod, store {env.get('SESSION_STORE')}, bucket {env.get('GCS_BUCKET_NAME')}, args {sys.argv[1:]}"
)
result = {"version": 1, "outcome": "failed", "error": {"kind": "internal", "message": message}}
with open(env["PEERBOT_RESULT_FILE"], "w") as file:
    json.dump(result, file)
print("the stub worker fails on purpose", flush=True)
sys.exit(1)
"""


@pytest.mark.slow
def test_a_failing_worker_stops_the_demo_with_a_clear_message(sandbox: Sandbox) -> None:
    image = LocalImage(
        entrypoint=(sys.executable, "-c", STUB_WORKER),
        env={"PATH": os.environ.get("PATH", os.defpath)},
        workdir="/workspace",
    )
    demo, code, seconds = run_demo(sandbox, image=image)
    text = demo.transcript.text

    assert code == 1
    assert seconds < DEMO_LIMIT_SECONDS
    expected = (
        "the worker exited with 1: stub worker: 3/3 tokens, 4/4 endpoints, 3/3 folders in the pod, store "
        "gcs, bucket peerbot-conversations-prod, args ['worker']"
    )
    assert demo.failure == expected
    assert f"✗ The demo stopped: {expected}" in text
    assert "the stub worker fails on purpose" in text  # the worker's log, shown with the failure
    assert "Nothing is left running" in text
    assert "2. kubectl get conversations" not in text  # it stopped at the failing stage


def test_peerbot_demo_runs_the_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``peerbot demo`` (the CLI) reaches :func:`peerbot.demo.run`, which passes the options on."""
    seen: list[DemoOptions] = []

    def fake_run(self: Demo) -> int:
        seen.append(self.options)
        return 7

    monkeypatch.setattr(Demo, "run", fake_run)
    assert cli.main(["demo"]) == 7
    assert seen[-1].echo is sys.stdout
    assert seen[-1].transcript is None

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--quiet", "--transcript", str(tmp_path / "t.txt"), "--keep"])
    assert demo_run(args) == 7
    options = seen[-1]
    assert options.echo is None
    assert options.transcript == tmp_path / "t.txt"
    assert options.keep


# --- The kubelet stand-in: the container's environment, as a real kubelet builds it ----------------------

SECRET = {"data": {"github-token": "Z2hwX3NlY3JldA=="}}  # base64 of ghp_secret
CONFIG_MAP = {"data": {"GCS_BUCKET_NAME": "sessions", "LOG_LEVEL": "DEBUG"}}


def read(objects: dict[tuple[str, str], dict[str, Any]]) -> Any:
    return lambda kind, name: objects.get((kind, name))


def test_environment_layers_image_then_env_from_then_env() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "worker"}}],
        "env": [
            {"name": "LOG_LEVEL", "value": "INFO"},
            {
                "name": "GITHUB_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "github-token"}},
            },
            {
                "name": "BUCKET",
                "valueFrom": {"configMapKeyRef": {"name": "worker", "key": "GCS_BUCKET_NAME"}},
            },
        ],
    }
    env = container_environment(
        container,
        image_env={"PATH": "/bin", "LOG_LEVEL": "WARNING"},
        read=read({("secrets", "tokens"): SECRET, ("configmaps", "worker"): CONFIG_MAP}),
        hostname="pod-1",
    )
    assert env == {
        "PATH": "/bin",
        "HOSTNAME": "pod-1",
        "GCS_BUCKET_NAME": "sessions",
        "LOG_LEVEL": "INFO",  # env wins over envFrom, which wins over the image
        "GITHUB_TOKEN": "ghp_secret",
        "BUCKET": "sessions",
    }


@pytest.mark.parametrize(
    ("container", "objects", "message"),
    [
        (
            {
                "env": [
                    {"name": "T", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "github-token"}}}
                ]
            },
            {},
            'secret "tokens" not found',
        ),
        (
            {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "slack"}}}]},
            {("secrets", "tokens"): SECRET},
            "couldn't find key slack in Secret demo/tokens",
        ),
        (
            {"env": [{"name": "B", "valueFrom": {"configMapKeyRef": {"name": "worker", "key": "NOPE"}}}]},
            {("configmaps", "worker"): CONFIG_MAP},
            "couldn't find key NOPE in ConfigMap demo/worker",
        ),
        ({"envFrom": [{"configMapRef": {"name": "worker"}}]}, {}, 'configmap "worker" not found'),
    ],
)
def test_a_missing_secret_config_map_or_key_keeps_the_container_from_starting(
    container: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]], message: str
) -> None:
    with pytest.raises(ContainerConfigError) as failure:
        container_environment(container, image_env={}, read=read(objects), hostname="p", namespace="demo")
    assert str(failure.value) == message


def test_optional_references_may_be_missing() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "absent", "optional": True}}],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "k", "optional": True}}},
        ],
    }
    env = container_environment(
        container, image_env={}, read=read({("secrets", "tokens"): SECRET}), hostname="p"
    )
    assert env == {"HOSTNAME": "p"}


def test_paths_under_a_mount_go_to_the_pod_folder(tmp_path: Path) -> None:
    mounts = {"/workspace": tmp_path / "workspace", "/tmp": tmp_path / "tmp"}
    env = {"HOME": "/workspace/home", "TMPDIR": "/tmp", "OTHER": "/workspaces", "URL": "http://x/tmp"}
    assert map_paths(env, mounts) == {
        "HOME": str(tmp_path / "workspace" / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "OTHER": "/workspaces",
        "URL": "http://x/tmp",
    }


def test_the_termination_message_is_cut_at_4096_bytes_and_may_fall_back_to_the_log(tmp_path: Path) -> None:
    message, log = tmp_path / "termination-log", tmp_path / "log"
    message.write_bytes(b"x" * 5000)
    log.write_text("line\n" * 100 + "the last line\n")
    assert termination_message(message, policy="File", exit_code=0, log=log) == "x" * 4096
    message.write_bytes(b"")
    assert termination_message(message, policy="File", exit_code=1, log=log) is None
    fallback = termination_message(message, policy="FallbackToLogsOnError", exit_code=1, log=log)
    assert fallback is not None
    assert fallback.endswith("the last line")
    assert len(fallback.splitlines()) == 80
    assert termination_message(message, policy="FallbackToLogsOnError", exit_code=0, log=log) is None


# --- The kubelet stand-in against the Kubernetes stand-in ------------------------------------------------

KUBELET_STUB = """
import os, sys
with open(os.environ["PEERBOT_RESULT_FILE"], "w") as file:
    file.write(f"token={os.environ['GITHUB_TOKEN']} home={os.environ['HOME']} args={sys.argv[1:]}")
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def worker_job(name: str, *, key: str = "github-token", exit_code: int = 0) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": "worker", "app.kubernetes.io/managed-by": "peerbot-operator"}
    container = {
        "name": "worker",
        "image": "registry.test/worker:1",
        "args": ["worker"],
        "env": [
            {"name": "EXIT", "value": str(exit_code)},
            {"name": "HOME", "value": "/workspace/home"},
            {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": key}}},
        ],
        "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
    }
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "workspace", "emptyDir": {}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


async def test_the_kubelet_runs_a_job_as_a_process_and_reports_it_as_a_kubelet_would(
    kubernetes_standin: KubernetesStandIn, tmp_path: Path
) -> None:
    kube = kubernetes_standin
    kube.create(
        "secrets", {"metadata": {"name": "tokens"}, "stringData": {"github-token": "ghp_x"}}, "default"
    )
    image = LocalImage(entrypoint=(sys.executable, "-c", KUBELET_STUB), workdir="/workspace")
    async with LocalKubelet(kube, root=tmp_path / "pods", image=image) as kubelet:
        kube.create("jobs", worker_job("ok"), "default")
        kube.create("jobs", worker_job("fails", exit_code=3), "default")
        kube.create("jobs", worker_job("no-key", key="slack-token"), "default")
        done = await kubelet.wait_for_run("ok", timeout=10)
        failed = await kubelet.wait_for_run("fails", timeout=10)

        def container_waiting(_job: Any) -> bool:
            pods = kube.job_pods("default", "no-key")
            statuses = (pods[0].get("status") or {}).get("containerStatuses") or [] if pods else []
            return any("waiting" in (status.get("state") or {}) for status in statuses)

        await kube.await_for("jobs", "default", "no-key", container_waiting, timeout=10)

    assert done.exit_code == 0
    assert done.termination_message is not None
    assert done.termination_message.startswith("token=ghp_x home=" + str(done.folder / "volumes"))
    assert done.termination_message.endswith("args=['worker']")
    job = kube.get("jobs", "default", "ok")
    assert job is not None
    assert [c["type"] for c in job["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    pod = kube.job_pods("default", "ok")[0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (0, done.termination_message)

    assert failed.exit_code == 3
    failed_job = kube.get("jobs", "default", "fails")
    assert failed_job is not None
    assert [c["type"] for c in failed_job["status"]["conditions"]] == ["FailureTarget", "Failed"]

    # A missing key: the container never starts, and the pod says why, as the kubelet words it.
    pod = kube.job_pods("default", "no-key")[0]
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {
        "reason": "CreateContainerConfigError",
        "message": "couldn't find key slack-token in Secret default/tokens",
    }
    assert [event.kind for event in kubelet.events if event.job == "no-key"] == ["seen", "config-error"]
    assert all(run.job != "no-key" for run in kubelet.runs)
