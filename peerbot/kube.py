"""Connecting to Kubernetes the same way in every part: in a pod, or from a kubeconfig.

The namespace Peerbot works in is ``PEERBOT_NAMESPACE`` when set, else the pod's own namespace, else the
kubeconfig context's namespace, else ``default`` (DESIGN.md, "Where things run").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubernetesUnreachable(Exception):
    """No in-cluster credentials and no usable kubeconfig; the message says what to do."""


async def api_client() -> client.ApiClient:
    """An async API client: in-cluster credentials when in a pod, else the kubeconfig (``KUBECONFIG``)."""
    configuration = client.Configuration()
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(POD_NAMESPACE_FILE)  # noqa: ASYNC240
    if in_pod:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        try:
            # The client fixes its default path when imported; read KUBECONFIG now, as kubectl would.
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            await config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
        except (ConfigException, FileNotFoundError, TypeError) as error:
            raise KubernetesUnreachable(
                "no Kubernetes credentials: run inside a pod, or set KUBECONFIG to a kubeconfig file "
                f"whose current context points at your cluster ({error})"
            ) from None
    api = client.ApiClient(configuration=configuration)
    _without_environment_lookups(api)
    return api


#: The API client's read buffer, as kubernetes_asyncio sets it (a Conversation with its history of
#: annotations, or a watch event of a large object, can exceed aiohttp's 64 KiB default).
API_READ_BUFFER_BYTES: Final = 2**21


def _without_environment_lookups(api: client.ApiClient) -> None:
    """Give the API client a session that does not consult the environment on every request.

    kubernetes_asyncio opens its aiohttp session with ``trust_env=True``, so aiohttp looks up ``~/.netrc``
    and the proxy variables in a worker thread for *each* request: two thread hops per API call, a third
    of the operator's CPU under a burst of Conversations (and the same on the dispatcher's hot path). The
    API server is reached directly (in a pod) or through the kubeconfig's ``proxy-url``, which the client
    passes explicitly, so nothing is lost; only ``HTTPS_PROXY`` for the API server is no longer honoured.
    """
    rest: Any = api.rest_client
    old: aiohttp.ClientSession = rest.pool_manager
    connector = old.connector
    old.detach()  # the session is done with; its connection pool carries over
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=API_READ_BUFFER_BYTES
    )


def current_namespace(override: str | None) -> str:
    """The namespace to work in (see the module docstring)."""
    if override:
        return override
    if POD_NAMESPACE_FILE.exists():
        return POD_NAMESPACE_FILE.read_text().strip()
    try:
        _, active = config.list_kube_config_contexts(
            os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        )
    except (ConfigException, FileNotFoundError, TypeError):
        return "default"
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"
