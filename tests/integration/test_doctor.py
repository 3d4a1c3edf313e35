"""``peerbot doctor`` against the stand-ins: everything in order, then each dependency broken in turn.

Each broken case must be named by exactly its own check (a PROBLEM line with a fix), with every other check
still ``ok``: a doctor that blames the wrong thing sends people the wrong way.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peerbot.cli import main
from peerbot.doctor import CHECK_NAMES, DoctorSettings, Status, diagnose, report
from peerbot.testing.claude import ScriptedClaude
from peerbot.testing.gcs import GcsStandIn
from peerbot.testing.github import Access, GitHubStandIn, TokenGrant
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.registry import RegistryStandIn
from peerbot.testing.slack import SlackStandIn
from tests.fixtures.kubernetes import CONVERSATION_CRD

ORGANIZATION = "peerbot-community"
WRITER = "ghp_DoctorWriter00000000000000000000000000"
OUTSIDER = "ghp_DoctorOutsider0000000000000000000000000"
IMAGE = "peerbot-ai/peerbot-worker"


class World:
    """Every stand-in the doctor checks, started once for the module."""

    def __init__(self, gcs: GcsStandIn, root: Path) -> None:
        self.slack = SlackStandIn().start()
        self.kubernetes = KubernetesStandIn(crds=[CONVERSATION_CRD]).start()
        self.github = GitHubStandIn(
            organizations=[ORGANIZATION],
            tokens=[
                TokenGrant(WRITER, "peerbot-bot", organizations={ORGANIZATION: Access.WRITE}),
                TokenGrant(OUTSIDER, "outsider"),
            ],
        ).start()
        self.claude = ScriptedClaude().start()
        self.registry = RegistryStandIn().start()
        self.registry.add_image(IMAGE, "0.1.0")
        self.gcs = gcs
        self.bucket = gcs.create_bucket().name
        self.kubeconfig = self.kubernetes.write_kubeconfig(root / "kubeconfig", namespace="default")

    def stop(self) -> None:
        for standin in (self.registry, self.claude, self.github, self.kubernetes, self.slack):
            standin.stop()

    def settings(self, **overrides: Any) -> DoctorSettings:
        values: dict[str, Any] = {
            "slack_bot_token": self.slack.bot_token,
            "slack_app_token": self.slack.app_token,
            "slack_api_url": self.slack.api_url,
            "github_token": WRITER,
            "github_api_url": self.github.api_url,
            "github_organization": ORGANIZATION,
            "gcs_bucket_name": self.bucket,
            "storage_emulator_host": self.gcs.url,
            "anthropic_api_key": self.claude.api_key,
            "anthropic_base_url": self.claude.url,
            "worker_image": self.registry.reference(IMAGE, "0.1.0"),
            "peerbot_namespace": "default",
        }
        return DoctorSettings(**(values | overrides))

    def environment(self, **overrides: str) -> dict[str, str]:
        settings = self.settings()
        env = {
            name.upper(): (value.get_secret_value() if hasattr(value, "get_secret_value") else str(value))
            for name, value in settings.model_dump().items()
            if value is not None and name not in ("log_level", "log_format", "peerbot_maintenance")
        }
        return env | {"KUBECONFIG": str(self.kubeconfig)} | overrides


@pytest.fixture(scope="module")
def world(gcs_standin: GcsStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(gcs_standin, tmp_path_factory.mktemp("doctor"))
    yield made
    made.stop()


@pytest.fixture(autouse=True)
def _kubeconfig(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(world.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name in ("SLACK_SIGNING_SECRET", "SESSION_STORE"):
        monkeypatch.delenv(name, raising=False)


def statuses(findings: list[Any]) -> dict[str, Status]:
    return {finding.check: finding.status for finding in findings}


async def test_everything_in_order(world: World) -> None:
    findings = await diagnose(world.settings())
    assert statuses(findings) == dict.fromkeys(CHECK_NAMES, Status.OK), findings
    out = io.StringIO()
    assert report(findings, out) == 0
    assert "everything Peerbot needs is in order" in out.getvalue()


def _break_scopes(world: World) -> Callable[[], None]:
    world.slack.bot_scopes.remove("reactions:write")
    return lambda: world.slack.bot_scopes.append("reactions:write")


def _break_rbac(world: World) -> Callable[[], None]:
    world.kubernetes.deny("create", "jobs", group="batch")
    world.kubernetes.deny("patch", "conversations", group="peerbot.ai", subresource="status")
    return world.kubernetes.allow_all


#: check -> (settings overrides, a change to a stand-in returning its undo, words the finding must say)
BROKEN: dict[str, tuple[dict[str, Any], Callable[[World], Callable[[], None]] | None, tuple[str, ...]]] = {
    "slack": (
        {"slack_bot_token": "xoxb-1-2-0000000000000000deadbeef"},
        None,
        ("refused SLACK_BOT_TOKEN", "invalid_auth"),
    ),
    "scopes": ({}, _break_scopes, ("reactions:write",)),
    "socket": (
        {"slack_app_token": "xapp-1-A0-1-" + "0" * 64},
        None,
        ("apps.connections.open", "connections:write"),
    ),
    "rbac": ({}, _break_rbac, ("create jobs.batch", "patch conversations/status.peerbot.ai")),
    "bucket": (
        {"gcs_bucket_name": "no-such-peerbot-bucket"},
        None,
        ("does not exist", "gcloud storage buckets create"),
    ),
    "github": ({"github_token": OUTSIDER}, None, ("outsider is not a member of peerbot-community",)),
    "anthropic": (
        {"anthropic_api_key": "sk-ant-api03-not-a-real-key-000000"},
        None,
        ("refused ANTHROPIC_API_KEY",),
    ),
    "image": ({"worker_image": "IMAGE-PLACEHOLDER"}, None, ("peerbot-ai/peerbot-worker:9.9.9", "push")),
}


@pytest.mark.parametrize("broken", list(BROKEN))
async def test_each_broken_dependency_is_named(world: World, broken: str) -> None:
    overrides, change, words = BROKEN[broken]
    if overrides.get("worker_image") == "IMAGE-PLACEHOLDER":
        overrides = {"worker_image": world.registry.reference(IMAGE, "9.9.9")}
    undo = change(world) if change is not None else None
    try:
        findings = await diagnose(world.settings(**overrides))
    finally:
        if undo is not None:
            undo()
    found = statuses(findings)
    assert found[broken] is Status.PROBLEM, findings
    dependents = {"slack": {"scopes"}}.get(broken, set())  # no scopes to read without a good token
    others = {check: status for check, status in found.items() if check != broken and check not in dependents}
    assert set(others.values()) == {Status.OK}, findings
    finding = next(f for f in findings if f.check == broken)
    for word in words:
        assert word in finding.detail + (finding.fix or ""), finding
    assert finding.fix, "every problem comes with its fix"


async def test_a_missing_crd_is_named(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KubernetesStandIn() as bare:
        monkeypatch.setenv("KUBECONFIG", str(bare.write_kubeconfig(tmp_path / "bare", namespace="default")))
        findings = await diagnose(world.settings(), only=["crd", "rbac"])
    assert statuses(findings) == {"crd": Status.PROBLEM, "rbac": Status.OK}
    assert "kubectl apply -f charts/peerbot/crds/" in (findings[0].fix or "")


async def test_missing_settings_are_problems_not_crashes(world: World) -> None:
    findings = await diagnose(
        DoctorSettings(peerbot_namespace="default"), only=["slack", "socket", "github", "anthropic"]
    )
    assert {f.check: f.status for f in findings} == {
        "slack": Status.PROBLEM,
        "socket": Status.PROBLEM,
        "github": Status.PROBLEM,
        "anthropic": Status.PROBLEM,
    }
    assert all("is not set" in f.detail or "neither" in f.detail for f in findings)


def test_the_command_exits_non_zero_on_a_problem_and_never_prints_a_secret(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in world.environment().items():
        monkeypatch.setenv(name, value)
    assert main(["doctor", "--skip", "image"]) == 0
    good = capsys.readouterr().out
    monkeypatch.setenv("GITHUB_TOKEN", OUTSIDER)
    assert main(["doctor", "--only", "github,slack"]) == 1
    bad = capsys.readouterr().out
    assert "PROBLEM  github" in bad
    assert "1 problem found" in bad
    for secret in (world.slack.bot_token, world.slack.app_token, WRITER, OUTSIDER, world.claude.api_key):
        assert secret not in good + bad
    assert main(["doctor", "--only", "nonsense"]) == 2
