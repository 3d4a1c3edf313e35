"""``peerbot doctor``: check a deployment or a local set-up end to end, and say exactly what is wrong.

The playbooks' health-check and token-test scripts as one command. Each check prints one line, ``ok`` or
the problem and its fix; the command exits 1 when any check found a problem (0 otherwise, warnings
included), so it can gate a rollout. Checks run concurrently, each bounded by
:data:`CHECK_TIMEOUT_SECONDS`:

========== =================================================================================================
slack      ``auth.test`` with ``SLACK_BOT_TOKEN``
scopes     the bot token holds every scope ``slack-app-manifest.yaml`` asks for (Slack's ``x-oauth-scopes``)
socket     Socket Mode: ``apps.connections.open`` with ``SLACK_APP_TOKEN`` (skipped in HTTP mode)
crd        the Conversation CRD is served (``/apis/peerbot.ai/v1``)
rbac       the current identity may do what the operator does (SelfSubjectAccessReview per permission):
           run it in the operator's pod to check the operator's Role
bucket     the session bucket is reachable and writable: a probe object is written, then deleted
github     ``GITHUB_TOKEN`` is valid, has the ``repo`` scope (classic tokens), and its user is an active
           member of ``GITHUB_ORGANIZATION``
anthropic  ``ANTHROPIC_API_KEY`` is accepted (``count_tokens`` with ``ANTHROPIC_MODEL``: no tokens used)
image      ``WORKER_IMAGE`` is a valid reference and its registry has it (anonymous pull check)
========== =================================================================================================

Settings come from the environment (and ``.env``) under the same names as every part. No token is ever
printed; errors are passed through :func:`peerbot.logs.redact`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp
from pydantic import Field, SecretStr

from peerbot import constants
from peerbot.logs import redact
from peerbot.settings import PeerbotSettings, _hint

#: One check may take this long before it counts as failed (a slow dependency is a problem too).
CHECK_TIMEOUT_SECONDS: Final = 15.0
#: The bot scopes of ``slack-app-manifest.yaml`` (``tests/unit/test_doctor.py`` keeps the two equal).
REQUIRED_BOT_SCOPES: Final = (
    "app_mentions:read",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "channels:read",
    "groups:read",
    "im:read",
    "mpim:read",
    "chat:write",
    "commands",
    "files:read",
    "files:write",
    "reactions:write",
    "users:read",
)
#: What the operator does (its Role in charts/peerbot/templates/operator-rbac.yaml): verb, group,
#: resource, subresource.
OPERATOR_PERMISSIONS: Final = (
    *(
        (verb, constants.API_GROUP, "conversations", None)
        for verb in ("get", "list", "watch", "patch", "delete")
    ),
    ("patch", constants.API_GROUP, "conversations", "status"),
    *((verb, "batch", "jobs", None) for verb in ("get", "list", "watch", "create", "delete")),
    *((verb, "", "pods", None) for verb in ("get", "list", "watch")),
    ("create", "", "events", None),
)
#: Where the probe objects go in the bucket (deleted at once; a lifecycle rule may sweep leftovers).
PROBE_PREFIX: Final = "peerbot-doctor/"
#: Registries that Docker itself talks to over plain HTTP (a local registry).
INSECURE_REGISTRY_HOSTS: Final = ("127.0.0.1", "localhost")
_REFERENCE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
CHECK_NAMES: Final = ("slack", "scopes", "socket", "crd", "rbac", "bucket", "github", "anthropic", "image")


class Status(StrEnum):
    OK = "ok"
    PROBLEM = "problem"
    WARNING = "warning"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """One line of the report: a check, its status, what was found and (for a problem) the fix."""

    check: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        mark = {
            Status.OK: "ok",
            Status.PROBLEM: "PROBLEM",
            Status.WARNING: "warning",
            Status.SKIPPED: "skipped",
        }
        text = f"{mark[self.status]:<8} {self.check:<10} {redact(self.detail)}"
        if self.fix:
            text += f"\n{'':<8} {'':<10} fix: {redact(self.fix)}"
        return text


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Status.OK, detail)


def problem(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, Status.PROBLEM, detail, fix)


class DoctorSettings(PeerbotSettings):
    """Everything any part reads that the checks need; all optional: a missing one is a finding."""

    slack_bot_token: SecretStr | None = Field(default=None, json_schema_extra=_hint("set SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(default=None, json_schema_extra=_hint("set SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        default=None, json_schema_extra=_hint("set SLACK_SIGNING_SECRET")
    )
    slack_api_url: str = Field(default="https://slack.com/api/", json_schema_extra=_hint("set SLACK_API_URL"))
    github_token: SecretStr | None = Field(default=None, json_schema_extra=_hint("set GITHUB_TOKEN"))
    github_api_url: str = Field(
        default="https://api.github.com", json_schema_extra=_hint("set GITHUB_API_URL")
    )
    github_organization: str = Field(
        default=constants.DEFAULT_GITHUB_ORGANIZATION, json_schema_extra=_hint("set GITHUB_ORGANIZATION")
    )
    gcs_bucket_name: str = Field(
        default=constants.DEFAULT_GCS_BUCKET_NAME, json_schema_extra=_hint("set GCS_BUCKET_NAME")
    )
    storage_emulator_host: str | None = Field(
        default=None, json_schema_extra=_hint("set STORAGE_EMULATOR_HOST")
    )
    session_store: str = Field(default="gcs", json_schema_extra=_hint("set SESSION_STORE to gcs or local"))
    session_dir: Path = Field(default=Path("sessions"), json_schema_extra=_hint("set SESSION_DIR"))
    anthropic_api_key: SecretStr | None = Field(
        default=None, json_schema_extra=_hint("set ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(default=None, json_schema_extra=_hint("set ANTHROPIC_BASE_URL"))
    anthropic_model: str = Field(
        default=constants.DEFAULT_MODEL, json_schema_extra=_hint("set ANTHROPIC_MODEL")
    )
    worker_image: str = Field(
        default="ghcr.io/peerbot-ai/peerbot-worker:latest", json_schema_extra=_hint("set WORKER_IMAGE")
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


# --- Slack ------------------------------------------------------------------------------------------------


async def _slack_call(api_url: str, method: str, token: str) -> tuple[dict[str, Any], dict[str, str]]:
    """One Web API call (POST, token in the header); the JSON answer and the response headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            api_url.rstrip("/") + "/" + method,
            headers={"Authorization": f"Bearer {token}"},
            data={},
        ) as response,
    ):
        body = await response.json(content_type=None)
        return dict(body), {key.lower(): value for key, value in response.headers.items()}


async def check_slack(settings: DoctorSettings) -> list[Finding]:
    """``slack`` and ``scopes``: the bot token works and holds the manifest's scopes."""
    token = _secret(settings.slack_bot_token)
    if token is None:
        fix = "set SLACK_BOT_TOKEN to the Bot User OAuth Token (xoxb-...) from OAuth & Permissions"
        return [
            problem("slack", "SLACK_BOT_TOKEN is not set", fix),
            Finding("scopes", Status.SKIPPED, "no bot token"),
        ]
    try:
        body, headers = await _slack_call(settings.slack_api_url, "auth.test", token)
    except (aiohttp.ClientError, OSError, ValueError) as error:
        return [
            problem(
                "slack",
                f"Slack is unreachable at {settings.slack_api_url} ({type(error).__name__})",
                "check the network path to Slack (egress rules, proxy) and SLACK_API_URL",
            ),
            Finding("scopes", Status.SKIPPED, "Slack is unreachable"),
        ]
    if not body.get("ok"):
        code = body.get("error")
        return [
            problem(
                "slack",
                f"Slack refused SLACK_BOT_TOKEN ({code})",
                "copy the Bot User OAuth Token (xoxb-...) again from OAuth & Permissions (reinstalling "
                "the app issues a new one), update the Secret, then `kubectl rollout restart deploy -l "
                "app.kubernetes.io/instance=peerbot`",
            ),
            Finding("scopes", Status.SKIPPED, "the bot token was refused"),
        ]
    found = [ok("slack", f"auth.test: @{body.get('user')} in {body.get('team')} ({body.get('team_id')})")]
    granted = {scope.strip() for scope in headers.get("x-oauth-scopes", "").split(",") if scope.strip()}
    if not headers.get("x-oauth-scopes"):
        found.append(Finding("scopes", Status.WARNING, "Slack did not say which scopes the token holds"))
        return found
    missing = [scope for scope in REQUIRED_BOT_SCOPES if scope not in granted]
    if missing:
        found.append(
            problem(
                "scopes",
                f"the bot token lacks {', '.join(missing)}",
                "add them to the app (paste slack-app-manifest.yaml under App Manifest), reinstall the "
                "app to the workspace, and put the new bot token in the Secret",
            )
        )
    else:
        found.append(ok("scopes", f"all {len(REQUIRED_BOT_SCOPES)} scopes of slack-app-manifest.yaml"))
    return found


async def check_socket_mode(settings: DoctorSettings) -> list[Finding]:
    """``socket``: Socket Mode reachable with the app-level token (``apps.connections.open``)."""
    token = _secret(settings.slack_app_token)
    if token is None:
        if _secret(settings.slack_signing_secret) is not None:
            return [
                Finding("socket", Status.SKIPPED, "HTTP mode (SLACK_SIGNING_SECRET set, no SLACK_APP_TOKEN)")
            ]
        return [
            problem(
                "socket",
                "neither SLACK_APP_TOKEN (Socket Mode) nor SLACK_SIGNING_SECRET (HTTP mode) is set",
                "generate an app-level token with connections:write (Basic Information > App-Level Tokens) "
                "and set SLACK_APP_TOKEN",
            )
        ]
    try:
        body, _ = await _slack_call(settings.slack_api_url, "apps.connections.open", token)
    except (aiohttp.ClientError, OSError, ValueError) as error:
        return [problem("socket", f"Slack is unreachable ({type(error).__name__})", "check egress to Slack")]
    if not body.get("ok"):
        return [
            problem(
                "socket",
                f"apps.connections.open refused SLACK_APP_TOKEN ({body.get('error')})",
                "generate a new app-level token (xapp-...) with the connections:write scope under Basic "
                "Information > App-Level Tokens, and make sure Socket Mode is on in the app's settings",
            )
        ]
    return [ok("socket", "apps.connections.open gave a websocket URL")]


# --- Kubernetes -------------------------------------------------------------------------------------------


async def check_kubernetes(settings: DoctorSettings) -> list[Finding]:
    """``crd`` and ``rbac``: the CRD is served and the current identity has the operator's permissions."""
    from kubernetes_asyncio import client

    from peerbot.kube import KubernetesUnreachable, api_client, current_namespace

    try:
        api = await api_client()
    except KubernetesUnreachable as error:
        message = str(error)
        return [
            problem("crd", "no Kubernetes credentials", message),
            Finding("rbac", Status.SKIPPED, "no Kubernetes credentials"),
        ]
    namespace = current_namespace(settings.peerbot_namespace)
    findings: list[Finding] = []
    try:
        custom: Any = client.CustomObjectsApi(api)
        try:
            answer = await custom.get_api_resources(
                constants.API_GROUP, constants.API_VERSION, _preload_content=False
            )
            response = json.loads(await answer.read())
            resources = {item.get("name") for item in (response or {}).get("resources", [])}
            if constants.CONVERSATION_PLURAL in resources:
                findings.append(ok("crd", f"{constants.CONVERSATION_PLURAL}.{constants.API_GROUP} is served"))
            else:
                findings.append(_crd_missing())
        except client.ApiException as error:
            if error.status == 404:
                findings.append(_crd_missing())
            elif error.status == 401:
                findings.append(
                    problem("crd", "the Kubernetes API refused the credentials (401)", "log in again")
                )
            else:
                findings.append(
                    problem("crd", f"the Kubernetes API answered {error.status}", "see its message")
                )
        except (aiohttp.ClientError, OSError) as error:
            return [
                problem(
                    "crd", f"the Kubernetes API is unreachable ({type(error).__name__})", "check KUBECONFIG"
                ),
                Finding("rbac", Status.SKIPPED, "the Kubernetes API is unreachable"),
            ]
        findings.append(await _check_rbac(client.AuthorizationV1Api(api), namespace))
    finally:
        await api.close()
    return findings


def _crd_missing() -> Finding:
    return problem(
        "crd",
        "the Conversation CRD (conversations.peerbot.ai) is not installed",
        "kubectl apply -f charts/peerbot/crds/  (helm installs it on first install, never on upgrade)",
    )


async def _check_rbac(authorization: Any, namespace: str) -> Finding:
    from kubernetes_asyncio import client

    denied: list[str] = []
    for verb, group, resource, subresource in OPERATOR_PERMISSIONS:
        attributes: dict[str, Any] = {
            "namespace": namespace,
            "verb": verb,
            "group": group,
            "resource": resource,
        }
        if subresource:
            attributes["subresource"] = subresource
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        try:
            review = await authorization.create_self_subject_access_review(body, _preload_content=False)
            status = json.loads(await review.read()).get("status") or {}
        except client.ApiException as error:
            return Finding(
                "rbac",
                Status.WARNING,
                f"could not ask the API server what is allowed ({error.status}); "
                "run `kubectl auth can-i --list -n NAMESPACE "
                "--as=system:serviceaccount:NAMESPACE:peerbot-operator`",
            )
        if not status.get("allowed"):
            what = f"{resource}/{subresource}" if subresource else resource
            denied.append(f"{verb} {what}{'.' + group if group else ''}")
    if denied:
        return problem(
            "rbac",
            f"not allowed in namespace {namespace}: {', '.join(denied)}",
            "the operator's Role must allow them: reinstall the chart (`helm upgrade`), or compare the "
            "Role with charts/peerbot/templates/operator-rbac.yaml",
        )
    return ok(
        "rbac", f"all {len(OPERATOR_PERMISSIONS)} permissions the operator uses, in namespace {namespace}"
    )


# --- the session bucket -----------------------------------------------------------------------------------


async def check_bucket(settings: DoctorSettings) -> list[Finding]:
    """``bucket``: write a probe object under :data:`PROBE_PREFIX` and delete it."""
    if settings.session_store == "local":
        folder = settings.session_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe_file = folder / f".peerbot-doctor-{uuid.uuid4().hex}"
            probe_file.write_text("probe")
            probe_file.unlink()
        except OSError as error:
            return [
                problem(
                    "bucket",
                    f"the session folder {folder} is not writable ({error.strerror})",
                    "fix SESSION_DIR",
                )
            ]
        return [ok("bucket", f"the session folder {folder} is writable (SESSION_STORE=local)")]

    def probe() -> Finding:
        from google.api_core import exceptions

        from peerbot.session.gcs import make_client

        name = settings.gcs_bucket_name
        client = make_client(settings.storage_emulator_host)
        try:
            blob = client.bucket(name).blob(f"{PROBE_PREFIX}{uuid.uuid4().hex}")
            blob.upload_from_string(
                b"peerbot doctor probe", if_generation_match=0, timeout=CHECK_TIMEOUT_SECONDS
            )
            blob.delete(timeout=CHECK_TIMEOUT_SECONDS)
        except exceptions.NotFound:
            return problem(
                "bucket",
                f"the bucket {name} does not exist",
                f"create it (`gcloud storage buckets create gs://{name}`, docs/deploy-gke.md step 4) or set "
                "GCS_BUCKET_NAME to the right one",
            )
        except exceptions.Forbidden:
            return problem(
                "bucket",
                f"not allowed to write to gs://{name}",
                "grant roles/storage.objectUser on the bucket to the workers' Google service account and "
                "bind it with Workload Identity (docs/deploy-gke.md step 5)",
            )
        except Exception as error:
            return problem(
                "bucket",
                f"the bucket {name} is unreachable ({type(error).__name__}: {str(error)[:200]})",
                "check egress to storage.googleapis.com (or STORAGE_EMULATOR_HOST) and the credentials",
            )
        finally:
            client.close()
        return ok("bucket", f"gs://{name}: wrote and deleted a probe object")

    return [await asyncio.to_thread(probe)]


# --- GitHub -----------------------------------------------------------------------------------------------


async def check_github(settings: DoctorSettings) -> list[Finding]:
    """``github``: the token is valid, has ``repo`` (classic tokens), and its user may work in the org."""
    token = _secret(settings.github_token)
    if token is None:
        return [problem("github", "GITHUB_TOKEN is not set", "create a token (docs/deploy-gke.md step 6)")]
    base = settings.github_api_url.rstrip("/")
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "User-Agent": "peerbot-doctor",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            return [await _github(session, base, settings.github_organization)]
    except (aiohttp.ClientError, OSError) as error:
        return [
            problem("github", f"GitHub is unreachable at {base} ({type(error).__name__})", "check egress")
        ]


async def _github(session: aiohttp.ClientSession, base: str, org: str) -> Finding:
    async with session.get(f"{base}/user") as response:
        if response.status == 401:
            return problem(
                "github",
                "GitHub refused GITHUB_TOKEN (401 Bad credentials): it is wrong, revoked or expired",
                "create a new token (docs/deploy-gke.md step 6) and put it in the Secret's github-token key: "
                "the next worker Job reads it",
            )
        if response.status >= 400:
            return problem(
                "github", f"GitHub answered {response.status} to GET /user", "see githubstatus.com"
            )
        login = (await response.json()).get("login")
        scopes_header = response.headers.get("X-OAuth-Scopes")
    if scopes_header is not None:  # a classic token says its scopes; a fine-grained one does not
        scopes = sorted(scope.strip() for scope in scopes_header.split(",") if scope.strip())
        if "repo" not in scopes:
            return problem(
                "github",
                f"the token of {login} lacks the repo scope (it has: {', '.join(scopes) or 'none'})",
                "create a token with the repo scope, or a fine-grained token with Administration, "
                "Contents and Pull requests (read and write) on the organization",
            )
    async with session.get(f"{base}/orgs/{org}") as response:
        if response.status == 404:
            return problem(
                "github",
                f"the organization {org} does not exist or the token of {login} cannot see it",
                "set GITHUB_ORGANIZATION to the organization Peerbot works in and give the token access "
                "to it (fine-grained tokens: resource owner = the organization)",
            )
    async with session.get(f"{base}/user/memberships/orgs/{org}") as response:
        if response.status == 404:
            return problem(
                "github",
                f"{login} is not a member of {org}, so Peerbot cannot create repositories there",
                f"invite {login} to {org} (a member that may create repositories, or an owner), accept "
                "the invitation, then run peerbot doctor again",
            )
        if response.status == 403:
            return Finding(
                "github",
                Status.WARNING,
                f"token of {login} is valid; this (fine-grained) token cannot read its rights on {org}: "
                "check it has Administration, Contents and Pull requests, read and write",
            )
        membership = await response.json()
    if membership.get("state") != "active":
        return problem(
            "github",
            f"the membership of {login} in {org} is {membership.get('state')}",
            f"accept the invitation to {org} with the {login} account",
        )
    return ok("github", f"token of {login}, {membership.get('role')} of {org}")


# --- Anthropic --------------------------------------------------------------------------------------------


async def check_anthropic(settings: DoctorSettings) -> list[Finding]:
    """``anthropic``: the key is accepted (``count_tokens``: no tokens are used)."""
    key = _secret(settings.anthropic_api_key)
    if key is None:
        return [
            problem(
                "anthropic",
                "ANTHROPIC_API_KEY is not set",
                "create a key at console.anthropic.com and set it",
            )
        ]
    import anthropic

    client = anthropic.AsyncAnthropic(api_key=key, base_url=settings.anthropic_base_url, max_retries=0)
    try:
        counted = await client.messages.count_tokens(
            model=settings.anthropic_model, messages=[{"role": "user", "content": "peerbot doctor"}]
        )
    except anthropic.AuthenticationError:
        return [
            problem(
                "anthropic",
                "Anthropic refused ANTHROPIC_API_KEY (401)",
                "create a new key at console.anthropic.com, put it in the Secret's anthropic-api-key key",
            )
        ]
    except anthropic.PermissionDeniedError:
        return [
            problem("anthropic", "the key may not use the API (403)", "check the key's workspace and limits")
        ]
    except anthropic.NotFoundError:
        return [
            problem(
                "anthropic",
                f"the model {settings.anthropic_model} does not exist or the key may not use it",
                "set ANTHROPIC_MODEL (config.anthropicModel) to a model the key can use",
            )
        ]
    except anthropic.APIConnectionError as error:
        return [
            problem(
                "anthropic",
                f"Anthropic is unreachable ({type(error).__name__})",
                "check egress to api.anthropic.com",
            )
        ]
    except anthropic.APIStatusError as error:
        return [problem("anthropic", f"Anthropic answered {error.status_code}", "see status.anthropic.com")]
    finally:
        await client.close()
    return [
        ok("anthropic", f"key accepted; {settings.anthropic_model} counted {counted.input_tokens} tokens")
    ]


# --- the worker image -------------------------------------------------------------------------------------


def parse_image(reference: str) -> tuple[str, str, str] | None:
    """``(registry, repository, tag or digest)`` of an image reference, or ``None`` when it is not valid."""
    match = _REFERENCE.match(reference)
    if match is None:
        return None
    registry = match.group("registry")
    name = match.group("name")
    if registry is None or ("." not in registry and ":" not in registry and registry != "localhost"):
        # Docker Hub: "ubuntu" is library/ubuntu, "owner/name" is owner/name.
        name = f"{registry}/{name}" if registry else name
        registry = "registry-1.docker.io"
        if "/" not in name:
            name = f"library/{name}"
    return registry, name, match.group("digest") or match.group("tag") or "latest"


async def check_image(settings: DoctorSettings) -> list[Finding]:
    """``image``: the reference is valid and the registry has it (anonymous token flow, as a node pulls)."""
    reference = settings.worker_image
    parsed = parse_image(reference)
    if parsed is None:
        return [
            problem(
                "image",
                f"WORKER_IMAGE {reference!r} is not a valid image reference",
                "use REGISTRY/REPOSITORY:TAG (worker.image in the chart)",
            )
        ]
    registry, name, tag = parsed
    host = registry.split(":")[0]
    scheme = "http" if host in INSECURE_REGISTRY_HOSTS else "https"
    url = f"{scheme}://{registry}/v2/{name}/manifests/{tag}"
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.head(url, headers={"Accept": accept}) as response:
                status, challenge = response.status, response.headers.get("WWW-Authenticate", "")
            if status == 401 and challenge.lower().startswith("bearer "):
                token = await _registry_token(session, challenge, name)
                if token is not None:
                    headers = {"Accept": accept, "Authorization": f"Bearer {token}"}
                    async with session.head(url, headers=headers) as response:
                        status = response.status
    except (aiohttp.ClientError, OSError) as error:
        return [
            problem(
                "image",
                f"the registry {registry} is unreachable ({type(error).__name__})",
                "check the registry name in WORKER_IMAGE and the network path to it",
            )
        ]
    if status == 200:
        return [ok("image", f"{reference} is in {registry}")]
    if status == 404:
        return [
            problem(
                "image",
                f"{registry} has no {name}:{tag}",
                "push the worker image with that tag, or set worker.image.tag (WORKER_IMAGE) to one that "
                "exists",
            )
        ]
    if status in (401, 403):
        return [
            Finding(
                "image",
                Status.WARNING,
                f"{reference} is private (or unknown): it cannot be checked anonymously; the cluster's nodes "
                "need pull access (imagePullSecrets, or Artifact Registry in the cluster's project)",
            )
        ]
    return [problem("image", f"{registry} answered {status} for {name}:{tag}", "check the registry's status")]


async def _registry_token(session: aiohttp.ClientSession, challenge: str, name: str) -> str | None:
    values = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = values.get("realm")
    if not realm:
        return None
    params = {"service": values.get("service", ""), "scope": values.get("scope") or f"repository:{name}:pull"}
    async with session.get(realm, params=params) as response:
        if response.status != 200:
            return None
        body = await response.json(content_type=None)
    token = body.get("token") or body.get("access_token")
    return str(token) if token else None


# --- running ----------------------------------------------------------------------------------------------

Check = Callable[[DoctorSettings], Awaitable[list[Finding]]]
#: Each check function and the findings (names) it produces.
CHECKS: Final[Sequence[tuple[Check, tuple[str, ...]]]] = (
    (check_slack, ("slack", "scopes")),
    (check_socket_mode, ("socket",)),
    (check_kubernetes, ("crd", "rbac")),
    (check_bucket, ("bucket",)),
    (check_github, ("github",)),
    (check_anthropic, ("anthropic",)),
    (check_image, ("image",)),
)


async def _bounded(check: Check, names: tuple[str, ...], settings: DoctorSettings) -> list[Finding]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await check(settings)
    except TimeoutError:
        return [
            problem(name, f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s", "check the network path to it")
            for name in names
        ]
    except Exception as error:  # a check that crashes is a finding, never a traceback
        return [
            problem(name, f"the check failed: {type(error).__name__}: {str(error)[:300]}", "see the message")
            for name in names
        ]


async def diagnose(
    settings: DoctorSettings, *, only: Sequence[str] = (), skip: Sequence[str] = ()
) -> list[Finding]:
    """Run the checks (all, or ``only`` these names, minus ``skip``) concurrently; findings in order."""
    selected = [
        (check, names)
        for check, names in CHECKS
        if (not only or set(names) & set(only)) and not set(names) <= set(skip)
    ]
    results = await asyncio.gather(*(_bounded(check, names, settings) for check, names in selected))
    findings = [finding for group in results for finding in group]
    return [f for f in findings if (not only or f.check in only) and f.check not in skip]


def report(findings: Sequence[Finding], out: TextIO) -> int:
    """Print the findings; the exit status: 1 when any is a problem, else 0."""
    problems = [f for f in findings if f.status is Status.PROBLEM]
    for finding in findings:
        print(finding.line(), file=out)
    summary = (
        f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found"
        if problems
        else "everything Peerbot needs is in order"
    )
    print(f"\n{summary}.", file=out)
    return 1 if problems else 0


def run(args: Any) -> int:
    """Entry point of ``peerbot doctor`` (see :mod:`peerbot.cli`)."""
    from peerbot.settings import load_settings

    settings = load_settings(DoctorSettings)
    only = [name for name in (getattr(args, "only", None) or "").split(",") if name]
    skip = [name for name in (getattr(args, "skip", None) or "").split(",") if name]
    unknown = sorted(set(only + skip) - set(CHECK_NAMES))
    if unknown:
        print(
            f"unknown check(s): {', '.join(unknown)}; the checks are {', '.join(CHECK_NAMES)}",
            file=sys.stderr,
        )
        return 2
    findings = asyncio.run(diagnose(settings, only=only, skip=skip))
    if getattr(args, "json", False):
        print(
            json.dumps(
                [
                    {"check": f.check, "status": f.status.value, "detail": redact(f.detail), "fix": f.fix}
                    for f in findings
                ],
                indent=2,
            )
        )
        return 1 if any(f.status is Status.PROBLEM for f in findings) else 0
    return report(findings, sys.stdout)


__all__ = [
    "CHECK_NAMES",
    "OPERATOR_PERMISSIONS",
    "REQUIRED_BOT_SCOPES",
    "DoctorSettings",
    "Finding",
    "Status",
    "diagnose",
    "parse_image",
    "report",
    "run",
]
