"""The real kopf operator against the Kubernetes stand-in: handlers, status patches, finalizers, events.

Each test writes a tiny operator module, runs it with ``kopf run`` (in-process, through KopfRunner), acts
with kubectl as a user would, and waits (event-driven, bounded) for what the operator does.
"""

from __future__ import annotations

import json
import pathlib
import textwrap
import time
from typing import Any, Final

import kopf
import pytest

from peerbot.testing.kubernetes import KubernetesStandIn
from tests.fixtures.kubernetes import KopfOperator, Kubectl

NAMESPACE: Final = "default"
SPEC: Final = {
    "team": "T024BE7LD",
    "channel": "C01ABCDEF",
    "threadTs": "1700000000.123456",
    "user": "U01ABCDEF",
    "requestedTs": "1700000000.123456",
}
#: Generous for slow CI machines; each wait ends as soon as the expected change arrives.
WAIT_SECONDS: Final = 10.0
#: kopf must start (login, discovery, list, watch) quickly against the stand-in.
KOPF_STARTUP_BUDGET_SECONDS: Final = 2.0

OPERATOR: Final = """
import kopf

@kopf.on.create("peerbot.ai", "v1", "conversations")
def started(body, spec, patch, logger, **_):
    logger.info("Starting the conversation in %s", spec["channel"])
    kopf.info(body, reason="Started", message=f"Working in {spec['channel']}")
    patch.status["phase"] = "Running"
    patch.status["turns"] = 1
    patch.status["tokens"] = {"input": 1200, "output": 34, "total": 1234}
    patch.status["job"] = "conv-1-t1"

@kopf.on.delete("peerbot.ai", "v1", "conversations")
def stopped(name, logger, **_):
    logger.info("Cleaning up after %s", name)
"""


def conversation(name: str) -> str:
    manifest = {
        "apiVersion": "peerbot.ai/v1",
        "kind": "Conversation",
        "metadata": {"name": name},
        "spec": SPEC,
    }
    return json.dumps(manifest)


@pytest.fixture
def operator_module(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tiny_operator.py"
    path.write_text(textwrap.dedent(OPERATOR), encoding="utf-8")
    return path


def status_phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def test_kopf_starts_quickly_and_patches_the_status_shown_by_kubectl(
    kubernetes_standin: KubernetesStandIn,
    kopf_operator: KopfOperator,
    kubectl: Kubectl,
    operator_module: pathlib.Path,
) -> None:
    started = time.monotonic()
    with kopf_operator(operator_module) as runner:
        startup = time.monotonic() - started
        applied = kubectl("apply", "-f", "-", input=conversation("conv-1"))
        assert applied.returncode == 0, applied.stderr
        kubernetes_standin.wait_for(
            "conversations", NAMESPACE, "conv-1", lambda c: status_phase(c) == "Running", WAIT_SECONDS
        )
        table = kubectl("get", "conversations")
    assert runner.exit_code == 0
    assert startup < KOPF_STARTUP_BUDGET_SECONDS, f"kopf took {startup:.2f} s to start watching"
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "CHANNEL", "USER", "PHASE", "TURNS", "TOKENS", "JOB", "AGE"]
    assert row.split()[:7] == ["conv-1", "C01ABCDEF", "U01ABCDEF", "Running", "1", "1234", "conv-1-t1"]


def test_kopf_finalizer_is_added_and_removed_on_deletion(
    kubernetes_standin: KubernetesStandIn,
    kopf_operator: KopfOperator,
    kubectl: Kubectl,
    operator_module: pathlib.Path,
) -> None:
    with kopf_operator(operator_module):
        assert kubectl("apply", "-f", "-", input=conversation("conv-2")).returncode == 0
        with_finalizer = kubernetes_standin.wait_for(
            "conversations",
            NAMESPACE,
            "conv-2",
            lambda c: c if c and c["metadata"].get("finalizers") and status_phase(c) == "Running" else None,
            WAIT_SECONDS,
        )
        assert with_finalizer["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        deleted = kubectl("delete", "conversation", "conv-2", "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
        kubernetes_standin.wait_for("conversations", NAMESPACE, "conv-2", lambda c: c is None, WAIT_SECONDS)


def test_kopf_posts_events_about_its_handlers(
    kubernetes_standin: KubernetesStandIn,
    kopf_operator: KopfOperator,
    kubectl: Kubectl,
    operator_module: pathlib.Path,
) -> None:
    settings = kopf.OperatorSettings()
    settings.posting.loggers = True  # kopf 1.45 posts handler logs as events only when asked to
    with kopf_operator(operator_module, settings=settings):
        assert kubectl("apply", "-f", "-", input=conversation("conv-3")).returncode == 0

        def posted(_: object) -> list[tuple[str, str]] | None:
            events = kubernetes_standin.events(NAMESPACE, involved_name="conv-3")
            pairs = [(event["reason"], event["message"]) for event in events]
            explicit = ("Started", "Working in C01ABCDEF") in pairs
            return pairs if explicit and ("Logging", "Handler 'started' succeeded.") in pairs else None

        kubernetes_standin.wait_for("conversations", NAMESPACE, "conv-3", posted, WAIT_SECONDS)
        listed = kubectl("get", "events", "--field-selector", "involvedObject.name=conv-3")
    event = next(
        e for e in kubernetes_standin.events(NAMESPACE, involved_name="conv-3") if e["reason"] == "Started"
    )
    assert event["involvedObject"]["kind"] == "Conversation"
    owner = kubernetes_standin.get("conversations", NAMESPACE, "conv-3")
    assert owner is not None
    assert event["involvedObject"]["uid"] == owner["metadata"]["uid"]
    assert event["source"]["component"] == "kopf"
    assert event["metadata"]["name"].startswith("kopf-event-")
    assert listed.returncode == 0, listed.stderr
    assert "conversation/conv-3" in listed.stdout
    assert "Working in C01ABCDEF" in listed.stdout
