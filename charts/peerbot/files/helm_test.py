"""The `helm test` check, run inside the cluster by ``python -c`` with only the standard library.

1. The Conversation CRD is served: discovery lists ``conversations`` in ``peerbot.ai/v1``.
2. The dispatcher's ServiceAccount may read Conversations: getting one that does not exist answers
   404 NotFound *for conversations* (a missing CRD or a missing Role answers differently).
3. The dispatcher answers ``/health`` through its Service.

Each failure prints what went wrong and what to check, and exits non-zero. The API address and the
ServiceAccount folder can be overridden (tests/chart runs this against a local stand-in).
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any, NoReturn

ACCOUNT = os.environ.get("PEERBOT_TEST_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
API = os.environ.get("PEERBOT_TEST_API_URL", "https://kubernetes.default.svc")
#: Every request is bounded, so a broken network fails the test instead of hanging it.
TIMEOUT_SECONDS = 10
#: A Conversation name that never exists: reading it must answer 404 for the conversations resource.
PROBE_NAME = "peerbot-helm-test-probe"


def fail(message: str) -> NoReturn:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def api_get(path: str, token: str, context: ssl.SSLContext | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(API + path, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
            return int(response.status), dict(json.load(response))
    except urllib.error.HTTPError as error:
        try:
            return error.code, dict(json.load(error))
        except ValueError:
            return error.code, {}
    except (urllib.error.URLError, OSError) as error:
        fail(f"cannot reach the Kubernetes API at {API} ({error}); check the NetworkPolicies")


def main() -> None:
    namespace = os.environ["PEERBOT_TEST_NAMESPACE"]
    with open(f"{ACCOUNT}/token", encoding="utf-8") as handle:
        token = handle.read().strip()
    ca_file = f"{ACCOUNT}/ca.crt"
    context = ssl.create_default_context(cafile=ca_file) if API.startswith("https:") else None

    status, body = api_get("/apis/peerbot.ai/v1", token, context)
    served = [r.get("name") for r in body.get("resources", [])] if status == 200 else []
    if "conversations" not in served:
        fail(
            f"the Conversation CRD is not served (GET /apis/peerbot.ai/v1 answered {status}); check that "
            "`kubectl get crd conversations.peerbot.ai` finds it (helm installs it from the chart's crds/)"
        )
    print("ok: the Conversation CRD is served")

    path = f"/apis/peerbot.ai/v1/namespaces/{namespace}/conversations/{PROBE_NAME}"
    status, body = api_get(path, token, context)
    if status == 403:
        fail("the dispatcher's ServiceAccount may not get Conversations: check its Role and RoleBinding")
    details = body.get("details") or {}
    if not (status == 404 and details.get("kind") == "conversations"):
        fail(f"unexpected answer reading a Conversation: {status} {body.get('message')}")
    print("ok: the dispatcher's ServiceAccount can read Conversations")

    url = os.environ["PEERBOT_TEST_HEALTH_URL"]
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        fail(f"the dispatcher did not answer {url} ({error}); see the dispatcher's logs")
    if status != 200:
        fail(f"the dispatcher answered {status} on {url}; see the dispatcher's logs")
    print("ok: the dispatcher is healthy")


main()
