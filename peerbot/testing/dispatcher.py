"""The real dispatcher wired to the Slack and Kubernetes stand-ins: for tests, benchmarks and the demo.

:class:`DispatcherHarness` builds the dispatcher exactly as ``peerbot dispatcher`` does (settings,
:func:`~peerbot.dispatcher.app.build_dispatcher`), pointed at a :class:`~peerbot.testing.slack.SlackStandIn`
(``SLACK_API_URL``, its tokens and signing secret) and a
:class:`~peerbot.testing.kubernetes.KubernetesStandIn` (a kubeconfig for the async client), and delivers
payloads the way Slack would: signed HTTP requests in HTTP mode, envelopes on the websocket in Socket
Mode::

    async with DispatcherHarness(slack, kubernetes, socket_mode=True) as harness:
        delivery = harness.send(slack.app_mention(slack.human, slack.public_channel, f"{slack.mention} hi"))
        await delivery.wait_async()
        await harness.settle()
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, Final, Self

from kubernetes_asyncio import client, config

from peerbot import constants
from peerbot.dispatcher.app import DispatcherApp, build_dispatcher
from peerbot.settings import DispatcherSettings, load_settings
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import Delivery, SlackStandIn

#: How long :meth:`DispatcherHarness.settle` waits for follow-up work (posts, reactions) to finish.
SETTLE_TIMEOUT_SECONDS: Final = 5.0
#: How long start-up waits for the Socket Mode connection.
CONNECT_TIMEOUT_SECONDS: Final = 5.0


class DispatcherHarness:
    """One dispatcher replica against the stand-ins (see the module docstring).

    Args:
        slack: a started Slack stand-in.
        kubernetes: a started Kubernetes stand-in with the Conversation CRD installed.
        socket_mode: Socket Mode (``SLACK_APP_TOKEN``) instead of HTTP mode (``SLACK_SIGNING_SECRET``).
        namespace: where Conversations are written.
        api_url: send Kubernetes requests here instead of to ``kubernetes`` (a closed port or a server that
            never answers, to test what the person is told when the record cannot be written).
        settings: more ``DispatcherSettings`` fields (``rate_limit_per_minute=2``,
            ``peerbot_maintenance=True``...).
    """

    def __init__(
        self,
        slack: SlackStandIn,
        kubernetes: KubernetesStandIn,
        *,
        socket_mode: bool = False,
        namespace: str = "default",
        api_url: str | None = None,
        **settings: Any,
    ) -> None:
        self.slack = slack
        self.kubernetes = kubernetes
        self.socket_mode = socket_mode
        self.namespace = namespace
        self.api_url = api_url
        self._overrides = settings
        self._files: pathlib.Path | None = None
        self._api: client.ApiClient | None = None
        self._app: DispatcherApp | None = None

    @property
    def app(self) -> DispatcherApp:
        if self._app is None:
            raise RuntimeError("the harness is not started: use `async with DispatcherHarness(...)`")
        return self._app

    def settings(self) -> DispatcherSettings:
        """The settings the dispatcher runs with."""
        values: dict[str, Any] = {
            "slack_bot_token": self.slack.bot_token,
            "slack_api_url": self.slack.api_url,
            "port": constants.DEFAULT_PORT,
        }
        if self.socket_mode:
            values["slack_app_token"] = self.slack.app_token
        else:
            values["slack_signing_secret"] = self.slack.signing_secret
        values.update(self._overrides)
        return load_settings(DispatcherSettings, **values)

    async def start(self) -> Self:
        self._files = pathlib.Path(tempfile.mkdtemp(prefix="peerbot-dispatcher-"))
        kubeconfig = self.kubernetes.write_kubeconfig(self._files / "kubeconfig", namespace=self.namespace)
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        if self.api_url is not None:
            configuration.host = self.api_url
        self._api = client.ApiClient(configuration=configuration)
        self._app = await build_dispatcher(self.settings(), kube_client=self._api, namespace=self.namespace)
        await self._app.start("127.0.0.1", 0)
        if self.socket_mode:
            await self.slack.wait_for_socket_connection_async(timeout=CONNECT_TIMEOUT_SECONDS)
        return self

    async def stop(self) -> None:
        if self._app is not None:
            await self._app.stop()
            self._app = None
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
            self._files = None

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def send(self, payload: Mapping[str, Any]) -> Delivery:
        """Deliver a payload as Slack would on this dispatcher's transport; returns at once."""
        if self.socket_mode:
            return self.slack.send_socket_event(payload)
        return self.slack.send_event(self.app.events_url, payload)

    async def deliver(self, payload: Mapping[str, Any]) -> Delivery:
        """:meth:`send`, wait until Slack is done with it, then until follow-up work has finished."""
        delivery = await self.send(payload).wait_async()
        await self.settle()
        return delivery

    async def settle(self, timeout: float = SETTLE_TIMEOUT_SECONDS) -> None:  # noqa: ASYNC109
        """Wait until the dispatcher's follow-up work (status messages, reactions, replies) is done."""
        if not await self.app.dispatcher.background.wait_idle(timeout):
            raise TimeoutError(f"the dispatcher's follow-up work was still running after {timeout:g} s")

    def conversations(self) -> list[dict[str, Any]]:
        """The Conversations in the namespace, as the API server holds them."""
        return self.kubernetes.objects("conversations", self.namespace)

    def conversation(self, name: str) -> dict[str, Any] | None:
        return self.kubernetes.get("conversations", self.namespace, name)

    def metric(self, name: str, **labels: str) -> float:
        return self.app.metrics.value(name, **labels)
