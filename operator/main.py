"""``peerbot operator``: run kopf on the handlers of :mod:`peerbot.operator`, in one namespace."""

from __future__ import annotations

import argparse
import asyncio

from peerbot.kube import current_namespace
from peerbot.logs import configure_logging
from peerbot.settings import OperatorSettings, load_settings


def run(args: argparse.Namespace) -> int:
    """Start the operator; returns when kopf stops (SIGTERM, SIGINT)."""
    settings = load_settings(OperatorSettings)  # fail fast, with the settings message, before kopf starts
    configure_logging(settings.log_level, settings.log_format, service="operator")
    import kopf

    from peerbot.operator.handlers import REGISTRY

    namespace = current_namespace(settings.peerbot_namespace)
    asyncio.run(
        kopf.operator(
            registry=REGISTRY,
            standalone=True,
            namespaces=[namespace],
            liveness_endpoint=getattr(args, "liveness", None),
        )
    )
    return 0
