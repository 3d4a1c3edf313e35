"""The demo itself: start the world, play the story's two turns, show what happened, stop everything.

:class:`Demo` runs in one event loop (``asyncio.run``) and in a temporary folder it removes at the end:

1. **Start** (:class:`~peerbot.demo.stack.Stack`): the stand-ins, the real operator and dispatcher, the
   kubelet stand-in; print what is real and what stands in, with the stand-ins' addresses.
2. **The mention**: alice posts in #general; the Slack stand-in delivers the ``app_mention`` to the real
   dispatcher over Socket Mode. From there nothing is scripted but Claude's replies: the dispatcher records
   the Conversation, the operator creates the Job, the kubelet stand-in runs ``peerbot worker``, the
   worker works and answers, the operator records the outcome. The thread is shown live as it changes.
3. ``kubectl get conversations``: the real kubectl against the Kubernetes stand-in.
4. **The follow-up**: alice replies in the thread; a new turn restores the session and continues it, which
   the demo checks on what the scripted Claude received.

Any stage that fails stops the demo with a message saying which stage and why (and the logs that show
it); the exit status is then 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from peerbot.conversation import Phase
from peerbot.demo import story
from peerbot.demo.stack import NAMESPACE, DemoFailure, Stack, tail
from peerbot.demo.transcript import ThreadView, Transcript
from peerbot.naming import conversation_name
from peerbot.testing.claude import RecordedRequest
from peerbot.testing.kubelet import KubeletEvent, LocalImage, PodRun

#: The issue's promise is under 30 seconds; here it takes about 10. Past this the demo gives up and says
#: where it was.
DEMO_TIMEOUT_SECONDS: Final = 90.0
#: One turn (the worker starting, five model steps, two test runs, push, pull request) takes 2-4 s.
TURN_TIMEOUT_SECONDS: Final = 45.0
#: How long each of Claude's scripted steps streams. A real model step takes a few seconds; at about half a
#: second the status message (edited at most once a second) shows most steps live, and the whole demo
#: stays well under its 30 seconds.
STEP_SECONDS: Final = 0.5
#: The dispatcher acknowledges within Slack's 3 seconds, or Slack retries.
DELIVERY_TIMEOUT_SECONDS: Final = 10.0
#: kubectl answers in well under a second locally; this bounds a hung call.
KUBECTL_TIMEOUT_SECONDS: Final = 30.0
#: Phases that end a turn without an answer.
FAILED_PHASES: Final = {Phase.FAILED.value, Phase.TIMED_OUT.value, Phase.CANCELLED.value}
#: A link in Slack's mrkdwn: ``<url|label>``.
LINK: Final = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
#: Where ``scripts/setup`` installs kubectl when the machine has none.
LOCAL_KUBECTL: Final = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

HEADER: Final = """\
Peerbot demo: a coding agent in Slack, on Kubernetes, end to end on this machine.

No account and no network: Slack, Kubernetes, GitHub, Cloud Storage and Claude are local stand-ins.
Peerbot's own parts are the real ones: the dispatcher takes the Slack event, the operator (kopf) turns the
thread's Conversation into a worker Job, and the worker runs a turn of Claude on alice's repository with
real git, real tools and real tests. Claude's replies are written in advance; everything else happens."""

LEGEND: Final = "│ what people see in the Slack thread        · what happens behind it"

FOOTER: Final = """\
Run Peerbot for real:
  peerbot local        on one machine, no cluster: set SLACK_BOT_TOKEN, SLACK_APP_TOKEN (Socket Mode),
                       ANTHROPIC_API_KEY and GITHUB_TOKEN in the environment or in .env
  docs/deploy-gke.md   in a cluster: helm install on GKE Autopilot, then kubectl get conversations"""


@dataclass
class DemoOptions:
    """How the demo runs.

    Attributes:
        echo: where the transcript is printed as it happens (``None``: nowhere, ``--quiet``).
        transcript: also write the whole transcript to this file.
        keep: keep the temporary folder (logs, clones, the sessions' objects are gone with the stand-ins).
        image: how worker containers run (tests pass a stub; by default ``peerbot worker``).
        turn_timeout: how long one turn may take before the demo gives up.
        step_seconds: how long each of Claude's scripted steps streams.
    """

    echo: TextIO | None = field(default_factory=lambda: sys.stdout)
    transcript: Path | None = None
    keep: bool = False
    image: LocalImage | None = None
    turn_timeout: float = TURN_TIMEOUT_SECONDS
    step_seconds: float = STEP_SECONDS


def find_kubectl() -> str | None:
    """kubectl on ``PATH``, else the one ``scripts/setup`` put in ``.tools/bin``; ``None`` if neither."""
    found = shutil.which("kubectl")
    if found:
        return found
    if LOCAL_KUBECTL.is_file() and os.access(LOCAL_KUBECTL, os.X_OK):
        return str(LOCAL_KUBECTL)
    return None


@dataclass
class Turn:
    """One turn of the story, as the demo saw it."""

    requested_ts: str
    status: dict[str, Any] = field(default_factory=dict)
    run: PodRun | None = None


class Demo:
    """``peerbot demo`` (see the module docstring). ``Demo(DemoOptions()).run()`` returns the exit status.

    After :meth:`run`, the attributes tell what happened (the tests read them): :attr:`transcript`,
    :attr:`failure` (why it stopped, or ``None``), :attr:`turns` (each turn's recorded status and worker
    run), :attr:`claude_requests` (every request the scripted Claude answered), :attr:`continuity`,
    :attr:`kubectl_tables`, :attr:`seconds`, :attr:`root` (removed unless ``keep``).
    """

    def __init__(self, options: DemoOptions | None = None) -> None:
        self.options = options or DemoOptions()
        self.transcript = Transcript(self.options.echo)
        self.claude_requests: list[RecordedRequest] = []
        self.continuity: story.Continuity | None = None
        self.kubectl_tables: list[str] = []
        self.turns: list[Turn] = []
        self.seconds = 0.0
        self.root: Path | None = None
        self.failure: str | None = None
        self._view: ThreadView | None = None
        self._problem: asyncio.Future[KubeletEvent] | None = None

    # --- running -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run the whole demo; 0 when every stage worked, 1 (with the reason printed) otherwise."""
        started = time.monotonic()
        root = self.root = Path(tempfile.mkdtemp(prefix="peerbot-demo-"))
        # Whatever a library writes to a temporary file meanwhile (kubernetes_asyncio writes the API
        # server's CA there, and removes it only when the process exits) goes into the demo's own folder.
        saved_tempdir = tempfile.tempdir
        (root / "tmp").mkdir()
        tempfile.tempdir = str(root / "tmp")
        try:
            return asyncio.run(self._main(root))
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.failure = "interrupted"
            self.transcript.write("\nInterrupted: everything the demo started is stopped.")
            raise KeyboardInterrupt from None
        finally:
            tempfile.tempdir = saved_tempdir
            if self.options.keep:
                self.transcript.write(f"\nThe demo's folder is kept: {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            self.seconds = time.monotonic() - started
            if self.options.transcript is not None:
                self.transcript.save(self.options.transcript)

    async def _main(self, root: Path) -> int:
        loop = asyncio.get_running_loop()
        self._problem = loop.create_future()
        # SIGTERM (`timeout`, a CI runner) stops it as Ctrl-C does: everything is stopped on the way out.
        main = asyncio.current_task()
        assert main is not None
        handles_sigterm = threading.current_thread() is threading.main_thread()
        if handles_sigterm:
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
        self.transcript.write(HEADER)
        try:
            async with asyncio.timeout(DEMO_TIMEOUT_SECONDS):
                await self._play(root)
        except DemoFailure as failure:
            return self._failed(str(failure), failure.details)
        except TimeoutError:
            return self._failed(
                f"the demo did not finish within {DEMO_TIMEOUT_SECONDS:g} s",
                tail(root / "logs" / "operator.log"),
            )
        except Exception as error:
            return self._failed(f"unexpected error: {type(error).__name__}: {error}", traceback.format_exc())
        finally:
            if handles_sigterm:
                loop.remove_signal_handler(signal.SIGTERM)
            if self._view is not None:
                self._view.stop()
        self.transcript.write(
            f"\nDone in {self.transcript.elapsed:.1f} s: one thread, one Conversation, two turns, one pull "
            "request. Everything it started is stopped.\n"
        )
        self.transcript.write(FOOTER)
        return EXIT_OK

    def _failed(self, message: str, details: str) -> int:
        self.failure = message
        self.transcript.write(f"\n✗ The demo stopped: {message}")
        if details.strip():
            self.transcript.write("  " + details.strip().replace("\n", "\n  "))
        self.transcript.write(
            "\nNothing is left running. Run `peerbot demo --keep` to keep its folder (logs of the operator, "
            "the dispatcher and each worker) for a closer look."
        )
        return EXIT_FAILED

    async def _play(self, root: Path) -> None:
        self.transcript.section("Starting")
        stack = Stack(root, on_kubelet_event=self._kubelet_event, image=self.options.image)
        try:
            async with stack:
                self._introduce(stack)
                await self._mention(stack)
                await self._kubectl(stack)
                await self._follow_up(stack)
                await self._kubectl(stack)
                if self._view is not None:
                    self._view.stop()
                    self._view = None
                self.transcript.section("Stopping")
                self.transcript.event("demo", "stopping the dispatcher, the operator and the stand-ins")
        finally:
            self.claude_requests = stack.claude.message_requests

    # --- the stages ----------------------------------------------------------------------------------------

    def _introduce(self, stack: Stack) -> None:
        operator = stack.operator.pid if stack.operator is not None else "?"
        slack = stack.slack
        rows = [
            ("real", "dispatcher", "Socket Mode, in this process"),
            ("real", "operator", f"`peerbot operator` (kopf), process {operator}"),
            ("real", "worker", "`peerbot worker`, one process per Job (below)"),
            ("stand-in", "Slack", f"Web API and Socket Mode at {slack.api_url} · #general, alice"),
            (
                "stand-in",
                "Kubernetes API",
                f"{stack.kubernetes.url} · the CRD and the chart's objects",
            ),
            ("stand-in", "kubelet", "this demo: runs each worker Job as a local process"),
            ("stand-in", "GitHub", f"{stack.github.url} · {stack.repository} (alice's repository)"),
            ("stand-in", "Cloud Storage", f"fake-gcs-server at {stack.gcs.url} · sessions"),
            ("stand-in", "Claude", f"scripted Messages API at {stack.claude.url} · tools run for real"),
        ]
        self.transcript.write(
            f"Ready in {self.transcript.elapsed:.1f} s (stand-ins on 127.0.0.1, files in {stack.root}):"
        )
        for kind, name, where in rows:
            self.transcript.write(f"  {kind:<9} {name:<15} {where}")
        self.transcript.write(f"\n{LEGEND}")

    async def _mention(self, stack: Stack) -> None:
        slack = stack.slack
        self.transcript.section("1. alice asks Peerbot in #general")
        payload = slack.app_mention(
            slack.human, slack.public_channel, story.MENTION.format(mention=slack.mention)
        )
        thread_ts = str(payload["event"]["ts"])
        stack.claude.load(story.first_turn(self.options.step_seconds))
        self._view = ThreadView(slack, slack.public_channel, thread_ts, self.transcript)
        self._view.start()
        name = conversation_name(slack.team_id, slack.public_channel, thread_ts)
        milliseconds = await self._deliver(stack, payload, "the app_mention")
        if stack.kubernetes.get("conversations", NAMESPACE, name) is None:
            raise DemoFailure(f"the dispatcher acknowledged the mention but recorded no Conversation {name}")
        self.transcript.event(
            "dispatcher",
            f"got the app_mention over Socket Mode, recorded Conversation {name}, acknowledged it in "
            f"{milliseconds:.0f} ms",
        )
        await self._turn(stack, name, thread_ts, "the mention")
        self._show_thread(stack, thread_ts)

    async def _follow_up(self, stack: Stack) -> None:
        slack = stack.slack
        assert self._view is not None
        thread_ts = self._view.thread_ts
        name = conversation_name(slack.team_id, slack.public_channel, thread_ts)
        self.transcript.section("3. alice replies in the thread (no mention needed)")
        first_turn = stack.claude.message_requests
        stack.claude.load(story.second_turn(self.options.step_seconds))
        payload = slack.message_event(slack.human, slack.public_channel, story.FOLLOW_UP, thread_ts=thread_ts)
        reply_ts = str(payload["event"]["ts"])
        milliseconds = await self._deliver(stack, payload, "the reply")
        self.transcript.event(
            "dispatcher",
            "got the reply over Socket Mode (in a thread with a Conversation, no mention is needed), "
            f"recorded it as the newest request, acknowledged it in {milliseconds:.0f} ms",
        )
        await self._turn(stack, name, reply_ts, "the follow-up")
        requests = stack.claude.message_requests
        if len(requests) <= len(first_turn):
            raise DemoFailure("the follow-up's turn never asked Claude anything")
        self.continuity = story.continuity(first_turn, requests[len(first_turn)])
        if not self.continuity.continued:
            raise DemoFailure(
                "the follow-up did not continue the session", "\n".join(self.continuity.problems)
            )
        self.transcript.event(
            "Claude (stand-in)",
            f"the follow-up's first request held the first turn's {self.continuity.carried_messages} "
            "messages (restored from the session in Cloud Storage), then alice's reply: the same session "
            "continued",
        )
        self._show_thread(stack, thread_ts)

    async def _deliver(self, stack: Stack, payload: dict[str, Any], what: str) -> float:
        """Deliver ``payload`` to the dispatcher over Socket Mode; returns how fast it acknowledged (ms)."""
        assert stack.dispatcher is not None
        delivery = stack.dispatcher.send(payload)
        try:
            await delivery.wait_async(DELIVERY_TIMEOUT_SECONDS)
        except TimeoutError as error:
            raise DemoFailure(f"the dispatcher did not acknowledge {what}: {error}") from error
        acked = [attempt for attempt in delivery.attempts if attempt.outcome == "acked"]
        if not acked:
            raise DemoFailure(
                f"the dispatcher did not acknowledge {what} in time; Slack gave up after "
                f"{delivery.delivered_count} attempts",
                tail(stack.logs / "demo.log"),
            )
        return ((acked[0].acked_at or acked[0].sent_at) - acked[0].sent_at) * 1000

    async def _turn(self, stack: Stack, name: str, requested_ts: str, what: str) -> None:
        """Wait until the operator recorded the answer to ``requested_ts`` (or say why it never came)."""
        turn = Turn(requested_ts)
        self.turns.append(turn)

        def settled(obj: dict[str, Any] | None) -> dict[str, Any] | None:
            status: dict[str, Any] = (obj or {}).get("status") or {}
            if status.get("answeredTs") == requested_ts and status.get("phase") == Phase.WAITING.value:
                return status
            if status.get("phase") in FAILED_PHASES and status.get("attemptedTs") == requested_ts:
                return status
            return None

        answered = asyncio.ensure_future(
            stack.kubernetes.await_for(
                "conversations", NAMESPACE, name, settled, timeout=self.options.turn_timeout
            )
        )
        assert self._problem is not None
        done, _ = await asyncio.wait({answered, self._problem}, return_when=asyncio.FIRST_COMPLETED)
        if self._problem in done:
            answered.cancel()
            event = self._problem.result()
            raise DemoFailure(
                f"the worker Job {event.job} could not start: {event.message}",
                "The kubelet stand-in refused its pod as a cluster would; the operator's log says more:\n"
                + tail(stack.logs / "operator.log"),
            )
        try:
            status = answered.result()
        except TimeoutError as error:
            raise DemoFailure(
                f"{what} was not answered within {self.options.turn_timeout:g} s",
                f"{error}\n{self._worker_logs(stack)}",
            ) from error
        turn.status = status
        turn.run = next(
            (r for r in (stack.kubelet.runs if stack.kubelet else []) if r.job == status.get("job")), None
        )
        if status.get("phase") in FAILED_PHASES:
            raise DemoFailure(self._why_failed(status, turn.run), self._worker_logs(stack))
        tokens = (status.get("tokens") or {}).get("total", 0)
        self.transcript.event(
            "operator",
            f"read the worker's result: Conversation {status.get('phase')}, turn {status.get('turns')}, "
            f"{tokens} tokens, ${float(status.get('costUSD') or 0):.4f}",
        )
        if self._view is not None:
            self._view.catch_up()

    def _why_failed(self, status: dict[str, Any], run: PodRun | None) -> str:
        error = str(status.get("error") or "no error recorded")
        if run is None:
            return f"the turn ended {status.get('phase')}: {error}"
        if run.timed_out:
            return f"the worker was stopped at its deadline: {error}"
        result = run.result
        reason = result.error.message if result is not None and result.error is not None else error
        return f"the worker exited with {run.exit_code}: {reason}"

    def _worker_logs(self, stack: Stack) -> str:
        runs = stack.kubelet.runs if stack.kubelet is not None else []
        if not runs:
            return "The operator's log ends with:\n" + tail(stack.logs / "operator.log")
        last = runs[-1]
        return f"The worker's log ({last.job}) ends with:\n{last.log_tail()}"

    def _show_thread(self, stack: Stack, thread_ts: str) -> None:
        if self._view is not None:
            self._view.catch_up()
        channel = stack.slack.public_channel
        self.transcript.write("\nThe thread now, as alice sees it in Slack:\n")
        rendered = stack.slack.render_thread(channel, thread_ts)
        self.transcript.write("    " + rendered.replace("\n", "\n    "))
        links: dict[str, str] = {}
        for message in stack.slack.thread(channel, thread_ts):
            if message.user == stack.slack.bot_user_id:
                raw = json.dumps([message.text, message.blocks], ensure_ascii=False)
                links.update((label, url) for url, label in LINK.findall(raw))
        if links:
            self.transcript.write("\n    Links in Peerbot's answers (to the GitHub stand-in):")
            for label, url in links.items():
                self.transcript.write(f"    {label}  {url}")

    async def _kubectl(self, stack: Stack) -> None:
        title = (
            "2. kubectl get conversations"
            if len(self.kubectl_tables) == 0
            else "4. kubectl get conversations"
        )
        self.transcript.section(f"{title} (the real kubectl, against the Kubernetes stand-in)")
        kubectl = find_kubectl()
        if kubectl is None:
            self.transcript.write(
                "kubectl is not installed here (looked on PATH and in .tools/bin): scripts/setup installs "
                "it. The demo goes on without it."
            )
            return
        home = stack.root / "kubectl-home"
        home.mkdir(exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            kubectl,
            "--kubeconfig",
            str(stack.kubeconfig),
            "--cache-dir",
            str(home / "cache"),
            "get",
            "conversations",
            env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(KUBECTL_TIMEOUT_SECONDS):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DemoFailure(f"kubectl did not answer within {KUBECTL_TIMEOUT_SECONDS:g} s") from None
        text = output.decode(errors="replace").rstrip()
        if process.returncode != 0:
            raise DemoFailure(f"kubectl get conversations exited with {process.returncode}", text)
        self.kubectl_tables.append(text)
        self.transcript.write("$ kubectl get conversations\n" + text)

    # --- what the kubelet stand-in reports ------------------------------------------------------------------

    def _kubelet_event(self, event: KubeletEvent) -> None:
        write = self.transcript.event
        if event.kind == "seen":
            write("operator", f"created Job {event.job}")
        elif event.kind == "started":
            write(
                "kubelet (stand-in)",
                f"created the Job's pod {event.pod}; runs it as a local process: peerbot worker "
                f"(pid {event.pid})",
            )
        elif event.kind == "finished" and event.run is not None:
            run = event.run
            result = run.result
            outcome = result.outcome.value if result is not None else "no result"
            write(
                "kubelet (stand-in)",
                f"the worker exited with {run.exit_code} ({outcome}) after {run.seconds:.1f} s; its "
                "termination message is on the pod",
            )
        elif event.kind in ("rejected", "config-error"):
            write("kubelet (stand-in)", f"could not start Job {event.job}: {event.message}")
            if self._problem is not None and not self._problem.done():
                self._problem.set_result(event)
        else:
            write("kubelet (stand-in)", f"{event.kind} {event.job}")
