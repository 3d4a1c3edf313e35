"""A strict local Kubernetes API server for tests, benchmarks and ``peerbot demo``.

Built on kmock's Kubernetes emulator (:mod:`.emulator` says what it adds to make the real kopf, kubectl,
``kubernetes`` and ``kubernetes_asyncio`` behave as against a cluster, and what is not modelled).
:class:`KubernetesStandIn` runs it on localhost in a background thread and offers thread-safe helpers to read
objects and to play the Job controller, the kubelet and the garbage collector.
"""

from peerbot.testing.kubernetes.controllers import JobPodRejected
from peerbot.testing.kubernetes.emulator import StrictKubernetesEmulator
from peerbot.testing.kubernetes.errors import ApiError
from peerbot.testing.kubernetes.patches import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH
from peerbot.testing.kubernetes.resources import ResourceType
from peerbot.testing.kubernetes.standin import KubernetesStandIn

__all__ = [
    "APPLY_PATCH",
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "JobPodRejected",
    "KubernetesStandIn",
    "ResourceType",
    "StrictKubernetesEmulator",
]
