"""Connecting to Kubernetes the same way in every part: in a pod, or from a kubeconfig.

The namespace Peerbot works in is ``PEERBOT_NAMESPACE`` when set, else the pod's own namespace, else the
kubeconfig context's namespace, else ``default`` (DESIGN.md, "Where things run").
"""

from __future__ import annotations

import os
from pathlib import Path

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
    return client.ApiClient(configuration=configuration)


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
