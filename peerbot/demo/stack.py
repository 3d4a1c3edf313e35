"""Everything ``peerbot demo`` runs: the stand-ins, the real operator and dispatcher, the kubelet stand-in.

:class:`Stack` starts them all in a temporary folder and stops them all, in reverse, whatever happened:

- stand-ins for the outside world (:mod:`peerbot.testing`): Slack (Web API and Socket Mode), the Kubernetes
  API server with the Conversation CRD, GitHub over real git, Cloud Storage (fake-gcs-server), and a
  scripted Claude;
- what the Helm chart would install in the namespace: the workers' ServiceAccount, the Secret with the
  tokens (the stand-ins' own fake ones) and the workers' ConfigMap pointing every client at the stand-ins;
- the real operator, as its own process (``peerbot operator``, kopf), against the Kubernetes stand-in;
- the real dispatcher (Socket Mode), in this process, through
  :class:`~peerbot.testing.dispatcher.DispatcherHarness`;
- :class:`~peerbot.testing.kubelet.LocalKubelet`, which runs each worker Job as a local ``peerbot worker``.

Nothing listens anywhere but 127.0.0.1, and nothing is written outside the temporary folder (the stand-ins
that make their own temporary folders remove them when they stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import structlog

from peerbot import constants
from peerbot.demo.story import REPOSITORY_FILES
from peerbot.naming import user_repository_name
from peerbot.testing.claude import ScriptedClaude
from peerbot.testing.dispatcher import DispatcherHarness
from peerbot.testing.gcs import GcsStandIn
from peerbot.testing.github import Access, GitHubStandIn, TokenGrant
from peerbot.testing.kubelet import KubeletEvent, LocalImage, LocalKubelet, worker_image
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn

NAMESPACE: Final = "default"
ORGANIZATION: Final = constants.DEFAULT_GITHUB_ORGANIZATION
BUCKET: Final = constants.DEFAULT_GCS_BUCKET_NAME
#: The names the Helm chart gives these objects (release "peerbot").
SECRET_NAME: Final = "peerbot-secrets"  # noqa: S105 (a name, not a secret)
WORKER_SERVICE_ACCOUNT: Final = "peerbot-worker"
WORKER_CONFIG_MAP: Final = "peerbot-worker"
#: Nothing pulls it: the kubelet stand-in runs `peerbot worker` from this installation instead.
WORKER_IMAGE: Final = "ghcr.io/peerbot-ai/peerbot-worker:demo"
#: The Secret's keys, as the chart names them and the operator's Jobs refer to them
#: (``operator/jobs.py``; importing it here would load kopf and register the operator's handlers in this
#: process). Were they to differ, the kubelet stand-in would stop the pod with CreateContainerConfigError.
SECRET_KEYS: Final = {
    "SLACK_BOT_TOKEN": "slack-bot-token",
    "ANTHROPIC_API_KEY": "anthropic-api-key",
    "GITHUB_TOKEN": "github-token",
}
#: The bot's GitHub login in the stand-in (the token in the Secret belongs to it).
GITHUB_LOGIN: Final = "peerbot-bot"
#: The scripted Claude estimates tokens more sparingly than the real API, so Peerbot's prompt prefix
#: (about 700 tokens there) would never reach the real 1,024-token cache minimum: lowered so the demo's
#: footers show prompt caching at work, as they do against the real API.
MIN_CACHEABLE_TOKENS: Final = 200
#: The operator starts (imports, login, first lists and watches) in about a second.
OPERATOR_READY_SECONDS: Final = 20.0
#: kopf stops within a couple of seconds of SIGTERM; after this long it is killed.
OPERATOR_STOP_SECONDS: Final = 10.0
#: git seeds the repository in milliseconds; this only bounds a hung command.
GIT_TIMEOUT_SECONDS: Final = 30.0
#: Lines of a log shown when something fails.
LOG_TAIL_LINES: Final = 15
#: The CRD, from the chart in this checkout.
CRD_PATH: Final = Path(__file__).resolve().parents[2] / "charts" / "peerbot" / "crds" / "conversations.yaml"
#: git asks this helper for the seeding token (from the environment, never in a URL or a file).
_CREDENTIAL_HELPER: Final = (
    '!f() { test "$1" = get || exit 0; echo username=x; echo "password=$DEMO_GIT_TOKEN"; }; f'
)


class DemoFailure(Exception):
    """A stage of the demo failed; the message says which and why, ``details`` what to look at."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Stack:
    """The demo's world (see the module docstring). ``async with Stack(root) as stack: ...``.

    Args:
        root: an empty temporary folder; everything the demo writes goes under it.
        on_kubelet_event: called with every :class:`~peerbot.testing.kubelet.KubeletEvent`.
        image: how worker containers run (by default ``peerbot worker`` of this Python).
    """

    def __init__(
        self,
        root: Path,
        *,
        on_kubelet_event: Callable[[KubeletEvent], None] | None = None,
        image: LocalImage | None = None,
    ) -> None:
        self.root = root
        self.logs = root / "logs"
        self.github_token = "ghp_" + secrets.token_hex(18)  # a stand-in token, shaped like GitHub's
        self.slack = SlackStandIn(team_name="Peerbot Demo", team_domain="peerbot-demo")
        self.claude = ScriptedClaude(min_cacheable_tokens=MIN_CACHEABLE_TOKENS)
        self.github = GitHubStandIn(
            organizations=[ORGANIZATION],
            tokens=[TokenGrant(self.github_token, GITHUB_LOGIN, organizations={ORGANIZATION: Access.WRITE})],
            root=root / "github",
        )
        self.gcs = GcsStandIn()
        self.kubernetes = KubernetesStandIn(crds=[CRD_PATH])
        self.kubeconfig = root / "kubeconfig"
        self.image = image or worker_image()
        self._on_kubelet_event = on_kubelet_event
        self.operator: asyncio.subprocess.Process | None = None
        self.dispatcher: DispatcherHarness | None = None
        self.kubelet: LocalKubelet | None = None
        self.repository = ""
        self._stops: list[tuple[str, Callable[[], Any]]] = []
        self._saved_logging: tuple[Any, ...] | None = None

    # --- life ----------------------------------------------------------------------------------------------

    async def start(self) -> Self:
        if not CRD_PATH.exists():
            raise DemoFailure(
                f"the Conversation CRD is not at {CRD_PATH}",
                "peerbot demo runs from a checkout of the repository (it installs the chart's CRD into the "
                "Kubernetes stand-in): run it as scripts/run, or from the repository's virtualenv.",
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        self._log_to_file(self.logs / "demo.log")
        # The stand-ins start in threads of their own; Kubernetes and Slack first, for the operator.
        await asyncio.gather(
            self._start("Kubernetes stand-in", self.kubernetes.start, self.kubernetes.stop),
            self._start("Slack stand-in", self.slack.start, self.slack.stop),
        )
        self.kubernetes.write_kubeconfig(self.kubeconfig, namespace=NAMESPACE)
        await asyncio.gather(
            self._start("Claude stand-in", self.claude.start, self.claude.stop),
            self._start("GitHub stand-in", self.github.start, self.github.stop),
            self._start("Cloud Storage stand-in", self.gcs.start, self.gcs.stop),
        )
        await asyncio.to_thread(self._install_chart_objects)
        operator_ready = asyncio.create_task(self._start_operator())
        try:
            await asyncio.to_thread(self.gcs.create_bucket, BUCKET)
            self.repository = await asyncio.to_thread(self._seed_repository)
            self.dispatcher = DispatcherHarness(
                self.slack, self.kubernetes, socket_mode=True, namespace=NAMESPACE
            )
            dispatcher = self.dispatcher
            self._stops.append(("dispatcher", dispatcher.stop))
            await dispatcher.start()
            self.kubelet = LocalKubelet(
                self.kubernetes,
                root=self.root / "pods",
                image=self.image,
                namespace=NAMESPACE,
                on_event=self._on_kubelet_event,
            )
            kubelet = self.kubelet
            self._stops.append(("kubelet stand-in", kubelet.stop))
            await kubelet.start()
        finally:
            await operator_ready
        return self

    async def stop(self) -> list[str]:
        """Stop everything, in reverse order; returns what could not be stopped cleanly (normally none)."""
        problems: list[str] = []
        while self._stops:
            name, stop = self._stops.pop()
            try:
                result = stop()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as error:
                problems.append(f"{name}: {error}")
        self._restore_logging()
        return problems

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = await self.stop()
        if problems and exc is None:
            raise DemoFailure("some parts did not stop cleanly", "\n".join(problems))

    async def _start(self, name: str, start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        self._stops.append((name, stop))
        try:
            await asyncio.to_thread(start)
        except Exception as error:
            raise DemoFailure(f"the {name} did not start: {error}") from error

    # --- logs ------------------------------------------------------------------------------------------

    def _log_to_file(self, path: Path) -> None:
        """The dispatcher and the stand-ins log here instead of over the demo's output."""
        from peerbot.logs import configure_logging

        root = logging.getLogger()
        self._saved_logging = (root.level, list(root.handlers), structlog.get_config())
        configure_logging("INFO", "console", service="peerbot-demo")
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(root.handlers[0].formatter)
        root.handlers[:] = [handler]

    def _restore_logging(self) -> None:
        if self._saved_logging is None:
            return
        level, handlers, structlog_config = self._saved_logging
        root = logging.getLogger()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.setLevel(level)
        root.handlers[:] = handlers
        structlog.configure(**structlog_config)
        self._saved_logging = None

    # --- what the chart installs ---------------------------------------------------------------------------

    def _install_chart_objects(self) -> None:
        kube = self.kubernetes
        kube.create(
            "serviceaccounts",
            {"metadata": {"name": WORKER_SERVICE_ACCOUNT}, "automountServiceAccountToken": False},
            NAMESPACE,
        )
        tokens = {
            "SLACK_BOT_TOKEN": self.slack.bot_token,
            "ANTHROPIC_API_KEY": self.claude.api_key,
            "GITHUB_TOKEN": self.github_token,
        }
        kube.create(
            "secrets",
            {
                "metadata": {"name": SECRET_NAME},
                "type": "Opaque",
                "stringData": {SECRET_KEYS[name]: value for name, value in tokens.items()},
            },
            NAMESPACE,
        )
        kube.create(
            "configmaps",
            {"metadata": {"name": WORKER_CONFIG_MAP}, "data": dict(self.worker_config())},
            NAMESPACE,
        )

    def worker_config(self) -> Mapping[str, str]:
        """The workers' ConfigMap, as the chart renders it with every endpoint pointed at a stand-in."""
        return {
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "SLACK_API_URL": self.slack.api_url,
            "ANTHROPIC_BASE_URL": self.claude.url,
            "GITHUB_API_URL": self.github.api_url,
            "STORAGE_EMULATOR_HOST": self.gcs.url,
            "GCS_BUCKET_NAME": BUCKET,
            "GITHUB_ORGANIZATION": ORGANIZATION,
        }

    # --- alice's repository ----------------------------------------------------------------------------

    def _seed_repository(self) -> str:
        """Create alice's repository (named as Peerbot names it) holding the story's files."""
        full_name = f"{ORGANIZATION}/{user_repository_name(self.slack.human)}"
        self.github.create_repository(full_name, private=True, auto_init=True, description="A tiny checkout")
        work = self.root / "seed"
        home = self.root / "seed-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "DEMO_GIT_TOKEN": self.github_token,
            "GIT_AUTHOR_NAME": "Alice Example",
            "GIT_AUTHOR_EMAIL": "alice@example.com",
            "GIT_COMMITTER_NAME": "Alice Example",
            "GIT_COMMITTER_EMAIL": "alice@example.com",
        }

        def git(*args: str, cwd: Path) -> None:
            done = subprocess.run(
                ["git", "-c", f"credential.helper={_CREDENTIAL_HELPER}", *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
            if done.returncode != 0:
                raise DemoFailure(f"could not seed alice's repository: git {args[0]} failed", done.stderr)

        git("clone", "-q", self.github.clone_url(full_name), str(work), cwd=self.root)
        for name, content in REPOSITORY_FILES.items():
            (work / name).write_text(content, encoding="utf-8")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Apply the discount in total()", cwd=work)
        git("push", "-q", "origin", "HEAD", cwd=work)
        shutil.rmtree(work)
        shutil.rmtree(home)
        return full_name

    # --- the operator --------------------------------------------------------------------------------------

    def operator_environment(self) -> dict[str, str]:
        """``peerbot operator``'s environment: the chart's operator ConfigMap and Secret, on the stand-ins."""
        inherited = {
            name: value
            for name, value in os.environ.items()
            if name in ("PATH", "PYTHONPATH", "LANG", "LC_ALL")
        }
        return inherited | {
            "HOME": str(self.root / "operator-home"),
            "TMPDIR": str(self.root / "tmp"),
            "KUBECONFIG": str(self.kubeconfig),
            "PEERBOT_NAMESPACE": NAMESPACE,
            "SLACK_BOT_TOKEN": self.slack.bot_token,
            "SLACK_API_URL": self.slack.api_url,
            "WORKER_IMAGE": WORKER_IMAGE,
            "WORKER_SERVICE_ACCOUNT": WORKER_SERVICE_ACCOUNT,
            "WORKER_SECRET_NAME": SECRET_NAME,
            "WORKER_CONFIG_MAP": WORKER_CONFIG_MAP,
            "OPERATOR_PORT": "0",  # /health, /ready, /metrics on any free port, never a busy 8080
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "console",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    async def _start_operator(self) -> None:
        (self.root / "operator-home").mkdir(exist_ok=True)
        command = [sys.executable, "-m", "peerbot.cli", "operator"]
        with (self.logs / "operator.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=self.operator_environment(),
                cwd=self.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped as a whole
            )
        self.operator = process
        self._stops.append(("operator", self._stop_operator))

        def ready() -> None:
            for resource in ("conversations", "jobs", "pods"):
                self.kubernetes.wait_for_watch(resource, NAMESPACE, timeout=OPERATOR_READY_SECONDS)

        watching = asyncio.create_task(asyncio.to_thread(ready))
        exited = asyncio.create_task(process.wait())
        done, _ = await asyncio.wait({watching, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            raise DemoFailure(
                f"the operator (peerbot operator) exited with {process.returncode} while starting",
                tail(self.logs / "operator.log"),
            )
        exited.cancel()
        try:
            watching.result()
        except TimeoutError as error:
            raise DemoFailure(
                f"the operator did not start watching Conversations within {OPERATOR_READY_SECONDS:g} s",
                tail(self.logs / "operator.log"),
            ) from error

    async def _stop_operator(self) -> None:
        process = self.operator
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(OPERATOR_STOP_SECONDS):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise RuntimeError(
                f"the operator did not stop within {OPERATOR_STOP_SECONDS:g} s of SIGTERM and was killed"
            ) from None
