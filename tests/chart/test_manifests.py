"""What the chart renders: valid for the Kubernetes versions GKE offers, least privilege, the restricted Pod
Security Standard, probes, checksums, selectors, and settings that agree with peerbot/settings.py.

The chart is rendered once per values set for the whole module (``rendered``), then read as dictionaries.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes_validate
import pytest

from peerbot.claim import token_digest
from peerbot.conversation import ConversationSpec
from peerbot.operator.jobs import (
    WORKER_SECRET_KEYS,
    WORKER_UID,
    build_worker_job,
    job_labels,
    job_settings_from,
)
from peerbot.operator.pool import pool_settings
from peerbot.operator.warm import build_idle_pod
from peerbot.planner import TurnRequest
from peerbot.settings import (
    DispatcherSettings,
    OperatorSettings,
    PeerbotSettings,
    WorkerSettings,
    load_settings,
)
from tests.chart.rendering import (
    NAMESPACE,
    REPO,
    Manifest,
    Rendered,
    config_map_env,
    container_env_names,
    render,
    render_text,
)

#: Kubernetes minor versions GKE offers (regular and rapid channels); kubernetes-validate ships their schemas.
KUBERNETES_VERSIONS = ("1.33.0", "1.34.0")
GCP_SA = "peerbot-worker@my-project.iam.gserviceaccount.com"
#: Every switch on at once: HTTP mode with an Ingress, autoscaling, PodMonitorings, Workload Identity,
#: restricted ingress peers, a digest-pinned worker image.
EVERYTHING_ON = {
    "slack.mode": "http",
    "dispatcher.ingress.enabled": "true",
    "dispatcher.ingress.host": "peerbot.example.com",
    "autoscaling.enabled": "true",
    "autoscaling.targetMemoryUtilizationPercentage": "80",
    "podDisruptionBudget.minAvailable": "1",
    "metrics.podMonitoring.enabled": "true",
    "worker.serviceAccount.gcpServiceAccount": GCP_SA,
    "worker.image.digest": "sha256:" + "a" * 64,
    "networkPolicy.dispatcher.ingressFrom[0].namespaceSelector.matchLabels.team": "edge",
    "dispatcher.topologySpreadConstraints[0].maxSkew": "1",
    "dispatcher.topologySpreadConstraints[0].topologyKey": "topology.kubernetes.io/zone",
    "dispatcher.topologySpreadConstraints[0].whenUnsatisfiable": "ScheduleAnyway",
    "slack.allowedChannels[0]": "C01ABCDEF",
    "slack.allowedChannels[1]": "C02GHIJKL",
    "slack.trustedUsers[0]": "U01ABCDEF",
    "dispatcher.redis.enabled": "true",
    "secrets.redisUrl": "redis://redis.peerbot.svc:6379/0",
    "worker.extraConfig.MAX_TOOL_CALLS_PER_TURN": "40",
    "worker.pool.size": "2",
    "worker.pool.min": "1",
    "worker.pool.max": "5",
}
VALUE_SETS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "small-team": (["small-team.yaml"], {}),
    "large-team": (["large-team.yaml"], {}),
    "production": (["production.yaml"], {}),
    "everything-on": ([], EVERYTHING_ON),
}
#: Kinds from CRDs that kubernetes-validate has no schema for; each is checked by its own test below.
CUSTOM_KINDS = {("monitoring.googleapis.com/v1", "PodMonitoring")}
#: Settings the chart sets that no settings class reads yet (proposed to the team; see docs/configuration.md).
PROPOSED_SETTINGS: set[str] = set()
#: Read by a client library rather than by Peerbot's settings: google-cloud-storage's default project.
LIBRARY_SETTINGS = {"GOOGLE_CLOUD_PROJECT"}
#: Labels that change on every chart upgrade: in a selector they would orphan the old pods.
UNSTABLE_LABELS = {"helm.sh/chart", "app.kubernetes.io/version"}
FAKE_SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-test",
    "SLACK_APP_TOKEN": "xapp-test",
    "SLACK_SIGNING_SECRET": "signing-secret",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "GITHUB_TOKEN": "ghp_test",
    "REDIS_URL": "redis://localhost:6379/0",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: render(files, values, include_crds=True) for name, (files, values) in VALUE_SETS.items()}


@pytest.fixture(params=list(VALUE_SETS))
def each(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """The rendering of one values set (the test runs for each)."""
    return rendered[str(request.param)]


def _dispatcher(r: Rendered) -> Manifest:
    return r.component("Deployment", "dispatcher")


def _operator(r: Rendered) -> Manifest:
    return r.component("Deployment", "operator")


def _container(deployment: Manifest) -> Manifest:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- valid Kubernetes objects -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes(each, version):
    for obj in each.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid for {version}: {error}")


def test_validation_is_strict():
    """The check above must refuse an unknown field, or it proves nothing."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_pod_monitorings(rendered):
    monitorings = rendered["everything-on"].of_kind("PodMonitoring")
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitorings} == {
        "dispatcher",
        "operator",
    }
    for monitoring in monitorings:
        component = monitoring["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = rendered["everything-on"].component("Deployment", component)
        assert monitoring["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        ports = {p["name"] for p in _container(deployment)["ports"]}
        assert [e["port"] for e in monitoring["spec"]["endpoints"]] == ["http"]
        assert "http" in ports
    assert not rendered["default"].of_kind("PodMonitoring")


def test_every_object_is_namespaced_to_the_release(each):
    for obj in each.objects:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        assert obj["metadata"]["namespace"] == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


# --- least privilege --------------------------------------------------------------------------------------

Triple = tuple[str, str, str]
SettingsT = TypeVar("SettingsT", bound=PeerbotSettings)


def _triples(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
        and (resource in r.get("resources", []) or "*" in r.get("resources", []))
        and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
        for r in rules
    )


def _role_of(r: Rendered, service_account: str) -> list[dict[str, Any]]:
    """Every rule bound to ``service_account`` through any (Cluster)RoleBinding the chart renders."""
    rules: list[dict[str, Any]] = []
    for binding in r.of_kind("RoleBinding") + r.of_kind("ClusterRoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            role = r.get(binding["roleRef"]["kind"], binding["roleRef"]["name"])
            rules += role["rules"]
    return rules


DISPATCHER_RULES = {
    ("peerbot.ai", "conversations", "get"),
    ("peerbot.ai", "conversations", "create"),
    ("peerbot.ai", "conversations", "patch"),
}
OPERATOR_RULES = {
    ("peerbot.ai", "conversations", verb) for verb in ("get", "list", "watch", "patch", "delete")
} | {
    ("peerbot.ai", "conversations/status", "get"),
    ("peerbot.ai", "conversations/status", "patch"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "events", "create"),
}
#: With the warm pool on (worker.pool.size > 0) the operator also creates, claims and removes idle pods.
POOL_RULES = {("", "pods", "create"), ("", "pods", "patch"), ("", "pods", "delete")}


def _pool_on(r: Rendered) -> bool:
    return int(r.component("ConfigMap", "operator")["data"].get("WORKER_POOL_SIZE", "0")) > 0


def test_no_cluster_wide_permissions(each):
    assert not each.of_kind("ClusterRole")
    assert not each.of_kind("ClusterRoleBinding")


def test_no_wildcards(each):
    for role in each.of_kind("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"


def test_worker_has_no_role_and_no_token(each):
    account = each.component("ServiceAccount", "worker")
    name = account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert _role_of(each, name) == []
    assert not [r for r in each.of_kind("Role") if "worker" in r["metadata"]["name"]]
    assert not [b for b in each.of_kind("RoleBinding") if "worker" in b["metadata"]["name"]]


def test_worker_workload_identity_annotation(rendered):
    for name in ("small-team", "large-team", "production", "everything-on"):
        annotations = rendered[name].component("ServiceAccount", "worker")["metadata"]["annotations"]
        assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com"), name
    default = rendered["default"].component("ServiceAccount", "worker")["metadata"]
    assert "iam.gke.io/gcp-service-account" not in (default.get("annotations") or {})
    # Only the worker acts as the Google service account: the dispatcher and operator never get GCS.
    for component in ("dispatcher", "operator"):
        meta = rendered["everything-on"].component("ServiceAccount", component)["metadata"]
        assert "iam.gke.io/gcp-service-account" not in (meta.get("annotations") or {})


def test_dispatcher_may_only_get_create_patch_conversations(each):
    rules = _role_of(each, _dispatcher(each)["spec"]["template"]["spec"]["serviceAccountName"])
    assert _triples(rules) == DISPATCHER_RULES
    for verb in ("get", "list", "watch"):
        assert not _allows(rules, "", "secrets", verb), "the dispatcher must never read Secrets"
    assert not _allows(rules, "batch", "jobs", "create"), "the dispatcher must never create Jobs"
    assert not _allows(rules, "", "pods", "create")
    assert not _allows(rules, "peerbot.ai", "conversations", "delete")


def test_operator_rules_are_exactly_what_it_needs(each):
    rules = _role_of(each, _operator(each)["spec"]["template"]["spec"]["serviceAccountName"])
    assert _triples(rules) == OPERATOR_RULES | (POOL_RULES if _pool_on(each) else set())
    for verb in ("get", "list", "watch"):
        assert not _allows(rules, "", "secrets", verb), "the operator must never read Secrets"
    # Pods are made only for the warm pool (otherwise the Job controller makes them).
    assert _allows(rules, "", "pods", "create") == _pool_on(each)
    assert not _allows(rules, "", "pods/exec", "create")


# The Kubernetes calls in the code, mapped to the permission each needs. A call that is not in this table
# fails the test below: add it here *and* to the chart's Role, or the part is forbidden in a real cluster.
_CLIENT_CALLS: dict[str, Triple] = {
    "get_namespaced_custom_object": ("peerbot.ai", "conversations", "get"),
    "create_namespaced_custom_object": ("peerbot.ai", "conversations", "create"),
    "patch_namespaced_custom_object": ("peerbot.ai", "conversations", "patch"),
    "delete_namespaced_custom_object": ("peerbot.ai", "conversations", "delete"),
    "list_namespaced_custom_object": ("peerbot.ai", "conversations", "list"),
    "get_namespaced_custom_object_status": ("peerbot.ai", "conversations/status", "get"),
    "patch_namespaced_custom_object_status": ("peerbot.ai", "conversations/status", "patch"),
    "create_namespaced_job": ("batch", "jobs", "create"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "read_namespaced_pod": ("", "pods", "get"),
    "list_namespaced_pod": ("", "pods", "list"),
    "create_namespaced_pod": ("", "pods", "create"),
    "patch_namespaced_pod": ("", "pods", "patch"),
    "delete_namespaced_pod": ("", "pods", "delete"),
    "create_namespaced_event": ("", "events", "create"),
}
_CALL = re.compile(r"\.((?:create|delete|get|patch|replace|list|read)_namespaced_[a-z_]+)\(")
_KOPF_DECORATOR = re.compile(r"@kopf\.([a-z_.]+)\(([^)]*)\)")


def _needed_by(folder: str) -> set[Triple]:
    """The permissions the code in ``folder`` needs, from its client calls and its kopf handlers."""
    needed: set[Triple] = set()
    for path in sorted((REPO / folder).rglob("*.py")):
        text = path.read_text()
        for call in _CALL.findall(text):
            assert call in _CLIENT_CALLS, (
                f"{path.name} calls {call}: add its permission to _CLIENT_CALLS and to the chart's Role"
            )
            needed.add(_CLIENT_CALLS[call])
        for decorator, args in _KOPF_DECORATOR.findall(text):
            if decorator in {"on.startup", "on.cleanup", "on.login", "on.probe"}:
                continue
            if "jobs" in args:
                group, resource = "batch", "jobs"
            elif "pods" in args:
                group, resource = "", "pods"
            else:
                group, resource = "peerbot.ai", "conversations"
            needed |= {(group, resource, "list"), (group, resource, "watch")}
            if decorator not in {"index", "on.event"}:  # handlers: kopf patches progress and finalizers
                needed.add((group, resource, "patch"))
        if "kopf.event(" in text or "kopf.info(" in text or "kopf.warn(" in text or "kopf.exception(" in text:
            needed.add(("", "events", "create"))
    return needed


def test_operator_role_covers_the_operator_code():
    needed = _needed_by("operator")
    granted = OPERATOR_RULES | POOL_RULES  # the chart grants POOL_RULES only when the pool is on
    assert needed, "no Kubernetes use found in operator/: the scan is broken"
    assert needed <= granted, f"the operator needs {sorted(needed - granted)}"
    # Beyond what the code calls, only `get` next to list (which reveals nothing more) is granted.
    extra = granted - needed
    assert all(verb == "get" for _, _, verb in extra), f"granted but never used: {sorted(extra)}"


def test_dispatcher_role_covers_the_dispatcher_code():
    needed = _needed_by("dispatcher")
    assert needed <= DISPATCHER_RULES, (
        f"the dispatcher's code needs {sorted(needed - DISPATCHER_RULES)}, but its Role may only get, create "
        "and patch Conversations, so that call is forbidden in a real cluster. Change the code (a readiness "
        "check can get a name that cannot exist and take 404 NotFound as ready), or widen DISPATCHER_RULES "
        "and templates/dispatcher-rbac.yaml together."
    )


# --- the restricted Pod Security Standard, and GKE Autopilot ------------------------------------------------

_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
#: Autopilot's accepted CPU:memory ratio for general-purpose pods, in GiB of memory per vCPU.
AUTOPILOT_MIN_GIB_PER_CPU = 1.0
AUTOPILOT_MAX_GIB_PER_CPU = 6.5


def _cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gib(quantity: str | int | float) -> float:
    text = str(quantity)
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text) / 2**30


def restricted_problems(name: str, pod: Manifest) -> list[str]:
    """What in one pod spec breaks the restricted Pod Security Standard or GKE Autopilot's rules."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{name}: {field}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"{name}: volume {volume['name']} is {kinds}")
    for container in pod.get("initContainers", []) + pod["containers"]:
        where = f"{name}/{container['name']}"
        context = container.get("securityContext", {})

        def effective(field: str, context: dict[str, Any] = context) -> Any:
            return context.get(field, pod_context.get(field))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{where}: runs as root")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(context.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities")
        if (effective("seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where}: no RuntimeDefault seccomp profile")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem is writable")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{where}: hostPort")
        requests = container.get("resources", {}).get("requests", {})
        if "cpu" not in requests or "memory" not in requests:
            problems.append(f"{where}: no CPU and memory requests (Autopilot needs them)")
            continue
        ratio = _gib(requests["memory"]) / _cpu(requests["cpu"])
        if not AUTOPILOT_MIN_GIB_PER_CPU <= ratio <= AUTOPILOT_MAX_GIB_PER_CPU:
            problems.append(f"{where}: {ratio:.2f} GiB per vCPU is outside Autopilot's 1 to 6.5")
    return problems


def test_every_pod_is_restricted_and_fits_autopilot(each):
    specs = list(each.pod_specs())
    assert len(specs) == 3, [name for name, _ in specs]  # dispatcher, operator, helm test
    problems = [p for name, pod in specs for p in restricted_problems(name, pod)]
    assert not problems, "\n".join(problems)


def test_restricted_check_catches_a_bad_pod():
    """The checker must not pass vacuously: a pod with each mistake gets each complaint."""
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    problems = "\n".join(restricted_problems("bad", bad))
    for expected in ("hostNetwork", "hostPath", "runAsNonRoot", "allowPrivilegeEscalation", "drop ALL"):
        assert expected in problems
    for expected in ("adds capabilities", "seccomp", "writable", "requests"):
        assert expected in problems


def test_pods_use_the_images_uid(each):
    for name, pod in each.pod_specs():
        assert pod["securityContext"]["runAsUser"] == WORKER_UID, name


def test_only_the_dispatcher_and_operator_mount_a_token(each):
    mounted = {name for name, pod in each.pod_specs() if pod.get("automountServiceAccountToken")}
    assert mounted == {
        f"Deployment/{_dispatcher(each)['metadata']['name']}",
        f"Deployment/{_operator(each)['metadata']['name']}",
        *(f"Pod/{p['metadata']['name']}" for p in each.of_kind("Pod")),  # helm test: reads the CRD
    }
    for account in each.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False  # pods opt in, one by one


# --- the worker Job the operator will create from the chart's settings -------------------------------------


def _operator_settings(r: Rendered, monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    env = config_map_env(r, _container(_operator(r)))
    return _load(OperatorSettings, {**env, "PEERBOT_NAMESPACE": NAMESPACE, **FAKE_SECRETS}, monkeypatch)


def _load(settings_cls: type[SettingsT], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SettingsT:
    """Load a settings class from exactly ``env`` (nothing from the test runner's own environment)."""
    for cls in (DispatcherSettings, OperatorSettings, WorkerSettings):
        for field in cls.model_fields:
            monkeypatch.delenv(field.upper(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(settings_cls)


def _worker_job(r: Rendered, monkeypatch: pytest.MonkeyPatch) -> Manifest:
    config = _operator_settings(r, monkeypatch)
    settings = job_settings_from(config, NAMESPACE)
    spec = ConversationSpec.model_validate(
        {
            "team": "T024BE7LD",
            "channel": "C01ABCDEF",
            "threadTs": "1700000000.123456",
            "user": "U01ABCDEF",
            "requestedTs": "1700000000.123456",
        }
    )
    request = TurnRequest(
        conversation="t024be7ld-c01abcdef-1700000000-123456",
        turn=1,
        attempt=1,
        job_name="t024be7ld-c01abcdef-1700000000-123456-t1",
        spec=spec,
        answered_ts=None,
    )
    job: Manifest = build_worker_job(request, settings, owner_uid="uid", now=datetime(2026, 1, 1, tzinfo=UTC))
    return job


def test_worker_jobs_fit_the_chart(each, monkeypatch):
    job = _worker_job(each, monkeypatch)
    pod = job["spec"]["template"]["spec"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    assert not restricted_problems("worker Job", pod)
    # It runs as the chart's worker ServiceAccount, reads the chart's ConfigMap and Secret.
    assert pod["serviceAccountName"] == each.component("ServiceAccount", "worker")["metadata"]["name"]
    container = pod["containers"][0]
    config_maps = [s["configMapRef"]["name"] for s in container["envFrom"]]
    assert config_maps == [each.component("ConfigMap", "worker")["metadata"]["name"]]
    secret_names = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    secret = each.of_kind("Secret")
    if secret:  # the chart's own Secret holds every key the worker reads
        assert secret_names == {secret[0]["metadata"]["name"]}
        assert set(WORKER_SECRET_KEYS.values()) <= set(secret[0]["data"])
    else:  # secrets.existingSecret
        assert secret_names == {"peerbot-secrets"}


def test_spot_workers(rendered, monkeypatch):
    job = _worker_job(rendered["small-team"], monkeypatch)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    job = _worker_job(rendered["default"], monkeypatch)
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def test_worker_image(rendered, monkeypatch):
    assert _operator_settings(rendered["default"], monkeypatch).worker_image == (
        "ghcr.io/peerbot-ai/peerbot-worker:0.1.0"
    )
    assert _operator_settings(rendered["production"], monkeypatch).worker_image == (
        "europe-west1-docker.pkg.dev/my-project/peerbot/peerbot-worker:0.1.0"
    )
    assert _operator_settings(rendered["everything-on"], monkeypatch).worker_image == (
        "ghcr.io/peerbot-ai/peerbot-worker@sha256:" + "a" * 64
    )


# --- network policies ---------------------------------------------------------------------------------------


def _selects(policy: Manifest, labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def test_worker_network_policy(rendered, monkeypatch):
    r = rendered["default"]
    policy = r.component("NetworkPolicy", "worker")
    job = _worker_job(r, monkeypatch)
    assert _selects(policy, job["spec"]["template"]["metadata"]["labels"])
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy["spec"].get("ingress"), "nothing may connect to a worker"
    allowed = set()
    for rule in policy["spec"]["egress"]:
        blocks = [peer["ipBlock"]["cidr"] for peer in rule.get("to", [])] or ["any"]
        for port in rule["ports"]:
            for block in blocks:
                allowed.add((block, port["protocol"], port["port"]))
    assert allowed == {
        ("any", "UDP", 53),
        ("any", "TCP", 53),
        ("0.0.0.0/0", "TCP", 443),
        ("169.254.169.254/32", "TCP", 80),
        ("169.254.169.252/32", "TCP", 988),
    }
    https = next(rule for rule in policy["spec"]["egress"] if rule["ports"][0]["port"] == 443)
    assert set(https["to"][0]["ipBlock"]["except"]) == {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


def test_worker_network_policy_without_metadata_server():
    r = render(set_values={"networkPolicy.worker.allowMetadataServer": "false"})
    rules = r.component("NetworkPolicy", "worker")["spec"]["egress"]
    assert not [rule for rule in rules if "169.254" in str(rule)]


def test_network_policies_select_only_their_component(each):
    if not each.of_kind("NetworkPolicy"):
        return
    for component in ("dispatcher", "operator"):
        policy = each.component("NetworkPolicy", component)
        deployment = each.component("Deployment", component)
        assert _selects(policy, deployment["spec"]["template"]["metadata"]["labels"])
        assert [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]] == [
            _container(deployment)["ports"][0]["containerPort"]
        ]


def test_dispatcher_ingress_peers_let_the_helm_test_in(rendered):
    r = rendered["everything-on"]
    peers = r.component("NetworkPolicy", "dispatcher")["spec"]["ingress"][0]["from"]
    test_pod = r.of_kind("Pod")[0]
    assert any(_selects({"spec": p}, test_pod["metadata"]["labels"]) for p in peers if "podSelector" in p)


def test_network_policies_can_be_turned_off(rendered):
    assert rendered["default"].of_kind("NetworkPolicy")
    assert not render(set_values={"networkPolicy.enabled": "false"}).of_kind("NetworkPolicy")


# --- probes, replicas and rollout ---------------------------------------------------------------------------


def test_dispatcher_probes(each):
    container = _container(_dispatcher(each))
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert str(port["containerPort"]) == config_map_env(each, container)["PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_operator_probe_and_single_replica(each):
    deployment = _operator(each)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(deployment)
    port = container["ports"][0]["containerPort"]
    assert container["args"] == ["operator"]  # it serves /health, /ready and /metrics on OPERATOR_PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert str(port) == config_map_env(each, container)["OPERATOR_PORT"]


def test_dispatcher_replicas_and_autoscaling(rendered):
    assert _dispatcher(rendered["default"])["spec"]["replicas"] == 2
    autoscaled = rendered["everything-on"]
    assert "replicas" not in _dispatcher(autoscaled)["spec"], "the HPA owns the replica count"
    hpa = autoscaled.component("HorizontalPodAutoscaler", "dispatcher")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _dispatcher(autoscaled)["metadata"]["name"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert not rendered["default"].of_kind("HorizontalPodAutoscaler")


def test_pod_disruption_budget(rendered):
    assert rendered["default"].component("PodDisruptionBudget", "dispatcher")["spec"]["maxUnavailable"] == 1
    assert rendered["large-team"].component("PodDisruptionBudget", "dispatcher")["spec"]["minAvailable"] == 2
    assert not rendered["small-team"].of_kind("PodDisruptionBudget")


def test_helm_test_pod(each):
    (pod,) = each.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    dispatcher_account = _dispatcher(each)["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod["spec"]["serviceAccountName"] == dispatcher_account
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    service = each.component("Service", "dispatcher")
    assert env["PEERBOT_TEST_HEALTH_URL"] == (
        f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}/health"
    )


def test_http_mode_ingress_exposes_only_slack_events(rendered):
    ingress = rendered["everything-on"].component("Ingress", "dispatcher")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/slack/events", "Exact")]
    assert not rendered["default"].of_kind("Ingress"), "Socket Mode needs no Ingress"


# --- checksums and selectors --------------------------------------------------------------------------------


def _checksums(r: Rendered) -> dict[str, dict[str, str]]:
    return {
        component: {
            key: value
            for key, value in r.component("Deployment", component)["spec"]["template"]["metadata"][
                "annotations"
            ].items()
            if key.startswith("checksum/")
        }
        for component in ("dispatcher", "operator")
    }


def test_checksums_roll_pods_when_config_or_secrets_change(rendered):
    base = _checksums(rendered["default"])
    assert base == _checksums(render()), "the same values must give the same checksums"
    config = _checksums(render(set_values={"slack.triggerPhrase": "@helper"}))
    assert config["dispatcher"]["checksum/config"] != base["dispatcher"]["checksum/config"]
    assert config["operator"]["checksum/config"] != base["operator"]["checksum/config"]
    assert config["dispatcher"]["checksum/secret"] == base["dispatcher"]["checksum/secret"]
    operator_only = _checksums(render(set_values={"operator.jobTtlSeconds": "60"}))
    assert operator_only["operator"]["checksum/config"] != base["operator"]["checksum/config"]
    assert operator_only["dispatcher"] == base["dispatcher"]
    secret = _checksums(render(set_values={"secrets.slackBotToken": "xoxb-rotated"}))
    for component in ("dispatcher", "operator"):
        assert secret[component]["checksum/secret"] != base[component]["checksum/secret"]
        assert secret[component]["checksum/config"] == base[component]["checksum/config"]


def _selectors(obj: Manifest) -> list[dict[str, str]]:
    spec = obj.get("spec", {})
    found = []
    if obj["kind"] == "Service":
        found.append(spec.get("selector", {}))
    for key in ("selector", "podSelector"):
        if isinstance(spec.get(key), dict) and "matchLabels" in spec[key]:
            found.append(spec[key]["matchLabels"])
    template = spec.get("template", {}).get("spec", {})
    for constraint in template.get("topologySpreadConstraints", []):
        found.append(constraint["labelSelector"].get("matchLabels", {}))
    for rule in spec.get("ingress", []):
        for peer in rule.get("from", []):
            if "podSelector" in peer:
                found.append(peer["podSelector"].get("matchLabels", {}))
    return found


def test_selectors_never_use_labels_that_change_on_upgrade(each):
    checked = 0
    for obj in each.objects:
        for selector in _selectors(obj):
            checked += 1
            assert selector, f"{obj['kind']}/{obj['metadata']['name']} has an empty selector"
            assert not set(selector) & UNSTABLE_LABELS, f"{obj['kind']}/{obj['metadata']['name']}: {selector}"
    assert checked >= 3


def test_deployment_selectors_match_their_own_pods_only(each):
    dispatcher, operator = _dispatcher(each), _operator(each)
    worker_labels = job_labels(
        TurnRequest(
            conversation="c",
            turn=1,
            attempt=1,
            job_name="c-t1",
            spec=ConversationSpec.model_validate(
                {"team": "T1", "channel": "C1", "threadTs": "1.1", "user": "U1", "requestedTs": "1.1"}
            ),
            answered_ts=None,
        )
    )
    for deployment in (dispatcher, operator):
        selector = deployment["spec"]["selector"]["matchLabels"]
        own = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= own.items()
        for other in (dispatcher, operator):
            if other is not deployment:
                assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
        assert not selector.items() <= worker_labels.items(), "a Deployment must never adopt worker pods"
    service = each.component("Service", "dispatcher")
    assert service["spec"]["selector"] == dispatcher["spec"]["selector"]["matchLabels"]


# --- settings: the chart sets exactly what peerbot/settings.py reads ----------------------------------------


def _fields(settings_cls: type[PeerbotSettings]) -> set[str]:
    return {name.upper() for name in settings_cls.model_fields}


def test_dispatcher_environment_matches_its_settings(each, monkeypatch):
    container = _container(_dispatcher(each))
    names = container_env_names(each, container)
    assert names <= _fields(DispatcherSettings) | PROPOSED_SETTINGS, names - _fields(DispatcherSettings)
    env = {**config_map_env(each, container), "PEERBOT_NAMESPACE": NAMESPACE}
    env |= {name: FAKE_SECRETS[name] for name in names if name in FAKE_SECRETS}
    settings = _load(DispatcherSettings, env, monkeypatch)
    settings.check_mode()  # Socket Mode has its app token, HTTP mode its signing secret
    mode = "http" if settings.slack_signing_secret else "socket"
    assert ("SLACK_APP_TOKEN" in names) == (mode == "socket")
    assert ("SLACK_SIGNING_SECRET" in names) == (mode == "http")


def test_operator_environment_matches_its_settings(each, monkeypatch):
    container = _container(_operator(each))
    names = container_env_names(each, container)
    assert names <= _fields(OperatorSettings), names - _fields(OperatorSettings)
    settings = _operator_settings(each, monkeypatch)
    assert settings.worker_service_account == each.component("ServiceAccount", "worker")["metadata"]["name"]
    assert settings.worker_config_map == each.component("ConfigMap", "worker")["metadata"]["name"]
    secrets = each.of_kind("Secret")
    assert settings.worker_secret_name == (secrets[0]["metadata"]["name"] if secrets else "peerbot-secrets")


def test_worker_config_matches_its_settings(each, monkeypatch):
    data = each.component("ConfigMap", "worker")["data"]
    allowed = _fields(WorkerSettings) | PROPOSED_SETTINGS | LIBRARY_SETTINGS
    assert set(data) <= allowed, set(data) - allowed
    env = {k: v for k, v in data.items() if k not in LIBRARY_SETTINGS}
    env |= {name: FAKE_SECRETS[name] for name in WORKER_SECRET_KEYS}
    _load(WorkerSettings, env, monkeypatch)


def test_lists_extra_config_and_redis(rendered, monkeypatch):
    r = rendered["everything-on"]
    container = _container(_dispatcher(r))
    env = config_map_env(r, container)
    assert env["ALLOWED_CHANNELS"] == "C01ABCDEF,C02GHIJKL"
    assert env["TRUSTED_USERS"] == "U01ABCDEF"
    assert "ALLOWED_USERS" not in env, "an empty list leaves the setting at its default"
    assert "REDIS_URL" in {e["name"] for e in container["env"]}
    assert "REDIS_URL" not in {e["name"] for e in _container(_dispatcher(rendered["default"]))["env"]}
    (secret,) = r.of_kind("Secret")
    assert "redis-url" in secret["data"]
    assert r.component("ConfigMap", "worker")["data"]["MAX_TOOL_CALLS_PER_TURN"] == "40"
    egress = r.component("NetworkPolicy", "dispatcher")["spec"]["egress"]
    assert any(p["port"] == 6379 for rule in egress for p in rule["ports"]), "the dispatcher may reach Redis"
    egress = rendered["default"].component("NetworkPolicy", "dispatcher")["spec"]["egress"]
    assert not any(p["port"] == 6379 for rule in egress for p in rule["ports"])


def test_secret_keys_match_what_the_parts_read(rendered):
    (secret,) = rendered["default"].of_kind("Secret")
    dispatcher_keys = {"slack-app-token", "slack-signing-secret"}
    assert set(secret["data"]) == set(WORKER_SECRET_KEYS.values()) | dispatcher_keys
    for name in ("large-team", "production"):
        assert not rendered[name].of_kind("Secret"), f"{name} uses secrets.existingSecret"
    for r in rendered.values():
        for _, pod in r.pod_specs():
            for container in pod["containers"]:
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] == env["name"].lower().replace("_", "-")


# --- the warm pool (docs/warm-workers.md) ------------------------------------------------------------------


def _idle_pod(r: Rendered, monkeypatch: pytest.MonkeyPatch) -> Manifest:
    """The idle pod the operator's pool would create from the chart's settings."""
    config = _operator_settings(r, monkeypatch)
    settings = job_settings_from(config, NAMESPACE)
    pod: Manifest = build_idle_pod(
        settings, pool_settings(config), token_digest("token"), datetime(2026, 1, 1, tzinfo=UTC)
    )
    return pod


def _selected_by(policy: Manifest, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not _selects(policy, labels):
        return False
    return all(
        (expression["operator"] == "Exists") == (expression["key"] in labels)
        for expression in selector.get("matchExpressions", [])
    )


def test_idle_pod_holds_no_secret_beyond_the_jobs(rendered, monkeypatch):
    r = rendered["everything-on"]
    pod = _idle_pod(r, monkeypatch)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    assert not restricted_problems("idle pod", pod["spec"])
    job = _worker_job(r, monkeypatch)
    job_env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    idle_env = pod["spec"]["containers"][0]["env"]
    # The same Secret references as a cold Job (the worker Secret's keys), nothing more, nothing of a turn.
    assert [e for e in idle_env if "valueFrom" in e] == [e for e in job_env if "valueFrom" in e]
    assert not [
        e
        for e in idle_env
        if e["name"].startswith("PEERBOT_") and "CLAIM" not in e["name"] and "IDLE" not in e["name"]
    ]
    assert pod["spec"]["serviceAccountName"] == job["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_only_the_operator_reaches_an_idle_pod_and_only_on_the_claim_port(rendered, monkeypatch):
    r = rendered["everything-on"]
    pod = _idle_pod(r, monkeypatch)
    labels = pod["metadata"]["labels"]
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    pool = r.component("NetworkPolicy", "worker-pool")
    assert _selected_by(pool, labels)
    assert _selects(r.component("NetworkPolicy", "worker"), labels)  # its egress rules still apply
    # A Job's pods (no pool label) are not opened by the pool's policy.
    job = _worker_job(r, monkeypatch)
    assert not _selected_by(pool, job["spec"]["template"]["metadata"]["labels"])
    [rule] = pool["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    operator_labels = _operator(r)["spec"]["template"]["metadata"]["labels"]
    assert len(rule["from"]) == 1
    assert _selects({"spec": rule["from"][0]}, operator_labels)
    assert set(rule["from"][0]) == {"podSelector"}  # no namespaceSelector: this namespace's operator only
    # The operator may send the hand-off there.
    egress = r.component("NetworkPolicy", "operator")["spec"]["egress"]
    assert any(
        [p["port"] for p in e["ports"]] == [port] and _selected_by({"spec": e["to"][0]}, labels)
        for e in egress
        if e.get("to") and "podSelector" in e["to"][0]
    )
    # The operator owns its idle pods through the downward API.
    names = {e["name"] for e in _container(_operator(r))["env"]}
    assert {"OPERATOR_POD_NAME", "OPERATOR_POD_UID"} <= names


def test_the_pool_is_off_unless_asked_for(rendered, monkeypatch):
    r = rendered["default"]
    assert not _pool_on(r)
    assert not [p for p in r.of_kind("NetworkPolicy") if "pool" in p["metadata"]["name"]]
    assert "OPERATOR_POD_UID" not in {e["name"] for e in _container(_operator(r))["env"]}
    assert _operator_settings(r, monkeypatch).worker_pool_size == 0
    on = _operator_settings(rendered["everything-on"], monkeypatch)
    assert (on.worker_pool_size, on.worker_pool_min, on.worker_pool_max) == (2, 1, 5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"worker.pool.size": "2", "worker.pool.min": "3"}, "worker.pool.min (3) cannot be more than"),
        ({"worker.pool.size": "2", "worker.pool.max": "1"}, "worker.pool.max (1) cannot be fewer than"),
        ({"worker.pool.size": "-1"}, "size"),
        ({"worker.pool.maxIdleMinutes": "0"}, "maxIdleMinutes"),
    ],
)
def test_pool_values_are_checked(values, message):
    result = render_text(set_values=values)
    assert result.returncode != 0
    assert message in result.stderr
