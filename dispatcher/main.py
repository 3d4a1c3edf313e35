"""``peerbot dispatcher``: load the settings, connect to Kubernetes and Slack, serve until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from peerbot.dispatcher.app import build_dispatcher
from peerbot.dispatcher.ratelimit import RateLimitUnavailable
from peerbot.kube import KubernetesUnreachable, api_client, current_namespace
from peerbot.logs import configure_logging
from peerbot.settings import DispatcherSettings, SettingsError, load_settings

EXIT_OK = 0
EXIT_UNREACHABLE = 1


#: Inside a pod the server must be reachable from the kubelet and the Service, so it binds every address.
DEFAULT_HOST = "0.0.0.0"  # noqa: S104


async def serve(
    settings: DispatcherSettings, *, host: str = DEFAULT_HOST, stop: asyncio.Event | None = None
) -> None:
    """Run the dispatcher until ``stop`` is set (or SIGTERM/SIGINT arrives), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    kube = await api_client()
    try:
        namespace = current_namespace(settings.peerbot_namespace)
        try:
            app = await build_dispatcher(settings, kube_client=kube, namespace=namespace)
        except RateLimitUnavailable as error:
            raise SettingsError([str(error)]) from None
        await app.start(host)
        try:
            await stop.wait()
        finally:
            await app.stop()
    finally:
        await kube.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``peerbot dispatcher`` (see :mod:`peerbot.cli`)."""
    settings = load_settings(DispatcherSettings)
    settings.check_mode()
    configure_logging(settings.log_level, settings.log_format, service="dispatcher")
    try:
        asyncio.run(serve(settings))
    except KubernetesUnreachable as error:
        print(f"peerbot dispatcher cannot start: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK
