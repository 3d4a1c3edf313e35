"""One turn of one Conversation, from the first status edit to the result document.

The life of a turn (``docs/worker.md`` tells it for people):

1. **Show up**: edit the status message (or post one) and react ⚙️, before anything slow is imported.
2. **Restore** the thread's session from the store, and read the thread's new messages since the newest
   one answered (who said what, shared files saved into the workspace).
3. **Check out** the repository: the one a message names (``repo=owner/name``), else the one the thread
   used before, else the Conversation's, else the user's own (created if needed); a shallow clone of the
   thread's branch.
4. **Pick up** what the last turn left: tool calls of a paused turn are run first; those of a turn that was
   killed get an "interrupted" result; Claude is told what happened.
5. **Run the agent** (:mod:`peerbot.worker.agent`), checkpointing every step.
6. **Deliver**: commit and push, open or update the draft pull request, post the answer with links and
   the footer, mark the messages answered in the session. Or **pause** at the deadline: push work in
   progress, save where to resume, post "paused" with a Continue button. Or **fail**: keep the work, say
   what happened and what to do.

Everything outside the worker (Slack, the session store, GitHub, Anthropic, the clock) comes in through
:class:`Dependencies`, so tests run a real turn against the local stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from peerbot import constants
from peerbot.conversation import Phase, Tokens
from peerbot.logs import get_logger
from peerbot.naming import thread_branch
from peerbot.planner import Reaction, ts_value
from peerbot.resilience import Breakers, Dependency
from peerbot.result import ErrorKind, ExitCode, Outcome, TurnError, TurnResult
from peerbot.session.format import ResumeState, Session, SessionChanges, SessionError, SessionKey
from peerbot.session.store import SessionStore
from peerbot.settings import WorkerSettings
from peerbot.worker import history, prompts
from peerbot.worker.agent import Agent, AgentOutcome, AgentState, FaultHook
from peerbot.worker.checkpoint import Checkpointer
from peerbot.worker.errors import RepositoryFailure, StorageFailure, TurnFailure
from peerbot.worker.inbox import SavedFile, compose, is_empty, requested_repository, safe_name
from peerbot.worker.pointers import TurnPointers
from peerbot.worker.pricing import Accounting
from peerbot.worker.progress import Progress
from peerbot.worker.redaction import Redactor
from peerbot.worker.slack_io import SlackThread, ThreadMessage, make_client, slack_error
from peerbot.worker.stats import TurnStatsCollector, timed_toolbox
from peerbot.worker.timing import Clock, Deadline, SystemClock

log = get_logger(__name__)

#: Environment variables whose names look like credentials never reach a tool's environment.
SECRET_NAME: Final = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIAL|PRIVATE_KEY", re.I)
#: Waits between attempts at a GitHub call or a push that failed with an outage.
OUTAGE_RETRY_DELAYS: Final = (1.0, 3.0)
#: Waits between attempts to read the session when the store does not answer.
LOAD_RETRY_DELAYS: Final = (0.5, 1.0, 2.0)
#: After SIGTERM (eviction, Stop): seconds to save pending steps, then to push work in progress.
TERMINATION_FLUSH_SECONDS: Final = 5.0
TERMINATION_PUSH_SECONDS: Final = 10.0
#: Excerpts kept in the pull request description.
PR_REQUEST_EXCERPT: Final = 600
PR_ANSWER_EXCERPT: Final = 4000
#: The reason stored in the session while a turn runs; a new worker finding it knows the last one died.
RUNNING: Final = "running"
#: Stored once the answer's work is pushed: a worker that dies now only has to post the stored answer.
DELIVERING: Final = "delivering"
PAUSED_AT_DEADLINE: Final = "deadline"
FAILED: Final = "failed"


def tool_environment(base: Mapping[str, str], *, workspace: Path) -> dict[str, str]:
    """The environment of the agent's commands: the worker's, without anything that looks like a secret."""
    env = {name: value for name, value in base.items() if not SECRET_NAME.search(name)}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env.update(
        {
            "PEERBOT_WORKSPACE": str(workspace),
            "GIT_TERMINAL_PROMPT": "0",
            "PAGER": "cat",
            "GIT_PAGER": "cat",
            "TERM": "dumb",
            "NO_COLOR": "1",
        }
    )
    return env


@dataclass
class Dependencies:
    """Everything outside the worker; each is made from the settings when left out."""

    store: SessionStore | None = None
    github: Any | None = None  # github.Github
    anthropic: Any | None = None  # anthropic.AsyncAnthropic
    slack: Any | None = None  # slack_sdk AsyncWebClient
    clock: Clock | None = None
    fault: FaultHook | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    progress_interval: float = constants.SLACK_STATUS_EDIT_INTERVAL_SECONDS
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    claude_max_attempts: int | None = None


@dataclass
class PushReport:
    """What happened when the work was committed and pushed."""

    pushed: bool = False
    error: str | None = None
    patch_uploaded: bool = False


class Turn:
    """One turn (see the module docstring). ``await Turn(...).run()`` returns the result to report, or
    ``None`` when the worker was told to stop (SIGTERM) and must leave no result."""

    def __init__(
        self, settings: WorkerSettings, pointers: TurnPointers, deps: Dependencies | None = None
    ) -> None:
        self.settings = settings
        self.pointers = pointers
        self.deps = deps or Dependencies()
        self.clock: Clock = self.deps.clock or SystemClock()
        self.key = SessionKey(pointers.peerbot_team, pointers.peerbot_channel, pointers.peerbot_thread_ts)
        self.redact = Redactor(
            [
                settings.slack_bot_token.get_secret_value(),
                settings.anthropic_api_key.get_secret_value(),
                settings.github_token.get_secret_value(),
            ]
        )
        self.accounting = Accounting()
        #: What only the worker knows about the turn, reported in the result for the operator's metrics.
        self.stats = TurnStatsCollector()
        self.breakers = Breakers()
        self.branch = thread_branch(pointers.peerbot_channel, pointers.peerbot_thread_ts)
        self.workspace = settings.workspace_dir
        self.repo_dir = self.workspace / "repo"
        self.attachments_dir = self.workspace / "attachments"
        self.deadline = Deadline(
            self.clock,
            pointers.deadline(self.clock.now(), settings.session_timeout_minutes),
            settings.pause_margin_seconds,
        )
        self.thread: SlackThread | None = None
        self.progress: Progress | None = None
        self.checkpointer: Checkpointer | None = None
        self.checkout: Any | None = None
        self.host: Any | None = None
        self.info: Any | None = None
        self.tools: Any | None = None
        self.pull: Any | None = None
        self.session: Session | None = None
        self.included_ts: str | None = None
        self.turn_recorded = False
        self.agent: Agent | None = None
        self.branch_pushed = False
        self._owned: list[Any] = []
        self._terminating = False
        self._task: asyncio.Task[Any] | None = None

    # --- life ---------------------------------------------------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM: stop the agent, save and push what can be, leave no result (the operator decides)."""
        if self._task is not None and not self._terminating:
            self._terminating = True
            self._task.cancel()

    async def run(self) -> TurnResult | None:
        """Run the turn; never raises for a failure the person can be told about."""
        self._task = asyncio.current_task()
        slack = self.deps.slack
        if slack is None:
            slack = make_client(
                self.settings.slack_bot_token.get_secret_value(),
                self.settings.slack_api_url,
                on_retry=lambda reason: self.stats.retry(Dependency.SLACK),
            )
        self.thread = SlackThread(
            slack,
            self.pointers.peerbot_channel,
            self.pointers.peerbot_thread_ts,
            redact=self.redact,
            on_fallback=self.stats.fallback,
        )
        self.progress = Progress(
            self.thread,
            self.deadline,
            conversation=self.pointers.peerbot_conversation,
            status_ts=self.pointers.peerbot_status_message_ts,
            reaction_ts=self.pointers.peerbot_requested_ts,
            interval=self.deps.progress_interval,
            updates=self.settings.enable_progress_updates,
            reactions=self.settings.enable_status_reactions,
        )
        try:
            await self.progress.start("restoring the session")
            self.stats.first_progress(self.pointers.peerbot_requested_ts, self.clock.now().timestamp())
            self._self_check()
            return await self._run()
        except asyncio.CancelledError:
            if not self._terminating:
                raise
            await self._after_termination()
            return None
        except TurnFailure as failure:
            return await self._fail(failure)
        except Exception as error:
            code = slack_error(error)
            if code is not None:
                return await self._fail(
                    TurnFailure(
                        ErrorKind.SLACK,
                        f"Slack refused one of Peerbot's requests ({code}).",
                        "A Peerbot administrator should check SLACK_BOT_TOKEN and the app's scopes and that "
                        "Peerbot is still in this channel; then reply here to try again.",
                        detail=self.redact(str(error)),
                    )
                )
            log.exception("turn_crashed")
            crash = TurnFailure(
                ErrorKind.INTERNAL,
                "Something went wrong on my side.",
                "Reply in this thread to try again; if it keeps happening, tell a Peerbot administrator "
                "(the worker's logs have the details).",
                detail=self.redact(f"{type(error).__name__}: {error}"),
            )
            return await self._fail(crash)
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.progress is not None:
            await self.progress.stop()
        if self.tools is not None:
            await self.tools.close()
        for client in self._owned:
            with contextlib.suppress(Exception):
                closing = client.close()
                if asyncio.iscoroutine(closing):
                    await closing

    def _self_check(self) -> None:
        """The start-up self-check (:func:`peerbot.health.worker_self_check`): the pod's own set-up."""
        from peerbot.health import OK, worker_self_check

        checks = worker_self_check(
            workspace=self.workspace, result_file=self.settings.peerbot_result_file, environment=self.deps.env
        )
        problems = {name: state for name, state in checks.items() if state != OK}
        log.info("worker_self_check", ok=not problems, checks=checks)
        if problems:
            raise TurnFailure(
                ErrorKind.INTERNAL,
                "My worker pod is not set up right, so I could not start.",
                "A Peerbot administrator must fix the worker Job's set-up (details below); then reply here "
                "to try again.",
                detail="; ".join(f"{name}: {state}" for name, state in problems.items()),
            )

    # --- the steps of a turn ------------------------------------------------------------------------------

    async def _run(self) -> TurnResult:
        assert self.thread is not None
        assert self.progress is not None
        progress = self.progress
        await self.thread.identify()
        store = self.deps.store if self.deps.store is not None else await asyncio.to_thread(self._make_store)
        session = self.session = await self._load(store)
        progress.done(
            f"restored the session ({session.next_seq} steps)" if session else "started a new session"
        )
        steps = list(session.steps) if session else []
        resume = session.resume if session else None
        if resume is not None and resume.requested_ts and resume.reason in (PAUSED_AT_DEADLINE, FAILED):
            left = Reaction.PAUSED if resume.reason == PAUSED_AT_DEADLINE else Reaction.FAILED
            progress.stale_reactions = {resume.requested_ts: {left.value}}
        bar = self._answered_bar(session)
        self.checkpointer = Checkpointer(
            store,
            self.key,
            generation=session.generation if session else 0,
            next_seq=session.next_seq if session else 0,
            sleep=self.deps.sleep,
        )
        progress.doing("reading the thread")
        messages = await self.thread.new_messages(bar)
        if messages:
            progress.done(f"read {len(messages)} new message{'s' if len(messages) != 1 else ''}")

        stored_answer = history.final_answer(steps) if resume and resume.reason == DELIVERING else None
        if stored_answer is not None and session is not None:
            # The last worker wrote the answer and pushed its work, but died before posting: post it now.
            self.included_ts = str(resume.details.get("includedTs") or bar) if resume else bar
            await self._open_repository(session.repository, clone=False)
            outcome = AgentOutcome(status="answered", answer=stored_answer)
            return await self._deliver(outcome, request_text="")
        if resume is None and not messages:
            await progress.finish(Phase.SUCCEEDED, "nothing new to answer")
            return self._result(Outcome.DONE, answered_ts=bar)
        if resume is None and all(is_empty(message) for message in messages):
            return await self._help(messages)

        wanted = requested_repository(messages) or (session.repository if session else None)
        await self._open_repository(wanted or self.pointers.peerbot_repository, clone=True)
        saved_files = await self._save_attachments(messages)
        return await self._work(session, steps, resume, messages, saved_files, bar)

    async def _work(
        self,
        session: Session | None,
        steps: list[Any],
        resume: ResumeState | None,
        messages: Sequence[ThreadMessage],
        saved_files: Mapping[str, SavedFile],
        bar: str | None,
    ) -> TurnResult:
        assert self.checkpointer is not None
        assert self.progress is not None
        assert self.info is not None
        self.tools = timed_toolbox(
            self.stats,
            workspace=self.workspace,
            repo_dir=self.repo_dir,
            env=tool_environment(self.deps.env, workspace=self.workspace),
            timeout_seconds=self.settings.tool_timeout_seconds,
            output_limit=self.settings.tool_output_limit,
            redact=self.redact,
        )
        context = prompts.PromptContext(
            workspace=self.workspace,
            repo_dir=self.repo_dir,
            attachments_dir=self.attachments_dir,
            repository=self.info.full_name,
            branch=self.branch,
            base_branch=None if self.info.empty else self.info.default_branch,
            tool_timeout_seconds=self.settings.tool_timeout_seconds,
            output_limit=self.settings.tool_output_limit,
            max_tool_calls=self.settings.max_tool_calls_per_turn,
        )
        state = AgentState(
            summary=session.summary if session else None,
            steps=steps,
            first_seq=session.first_seq if session else 0,
            turn_start_seq=self.checkpointer.next_seq,
            tool_calls=resume.tool_calls if resume and resume.reason == PAUSED_AT_DEADLINE else 0,
        )
        agent = Agent(
            claude=self._claude(),
            tools=self.tools,
            checkpointer=self.checkpointer,
            progress=self.progress,
            deadline=self.deadline,
            accounting=self.accounting,
            system=prompts.system_prompt(context),
            state=state,
            max_tool_calls=self.settings.max_tool_calls_per_turn,
            token_budget=self.settings.session_token_budget,
            fault=self.deps.fault or (lambda point: None),
        )
        self.agent = agent
        notes = [prompts.turn_header(deadline=self.deadline.soft, seconds_left=self.deadline.seconds_left())]
        if resume is not None:
            if resume.reason == PAUSED_AT_DEADLINE:
                notes.append(prompts.PAUSED_NOTE)
            elif resume.reason == FAILED:
                notes.append(prompts.failed_note(str(resume.details.get("error") or "an error")))
            else:
                notes.append(prompts.RESTARTED_NOTE)
        newest = messages[-1].ts if messages else None
        previous = (
            str(resume.details.get("includedTs")) if resume and resume.details.get("includedTs") else bar
        )
        self.included_ts = newest or previous
        changes = SessionChanges(
            repository=self.info.full_name,
            branch=self.branch,
            resume=self._resume_state(RUNNING, tool_calls=state.tool_calls),
        )
        open_calls = history.open_tool_calls(steps)
        if open_calls:
            if resume is not None and resume.reason == PAUSED_AT_DEADLINE:
                self.progress.doing("running the tool calls left from the pause")
                if not await agent.run_tool_calls(open_calls):
                    return await self._pause(agent._outcome("paused"))
            else:
                for call in open_calls:
                    step = history.tool_result_step(call.id, prompts.INTERRUPTED_RESULT, is_error=True)
                    state.steps.append(step)
                    await self.checkpointer.record([step])
        inbox = compose(messages, saved_files=saved_files, attachments_dir=self.attachments_dir, notes=notes)
        for name, text in inbox.long_texts.items():
            self.attachments_dir.mkdir(parents=True, exist_ok=True)
            (self.attachments_dir / name).write_text(text)
        first = history.user_text_step(inbox.text)
        state.steps.append(first)
        self._fault("turn:before-first-step")
        await self.checkpointer.record([first], changes)
        self.turn_recorded = True
        self._fault("turn:first-step-saved")
        outcome = await agent.run()
        request = next((m.text for m in messages if not is_empty(m)), "")
        if outcome.status == "paused":
            return await self._pause(outcome)
        return await self._deliver(outcome, request_text=request)

    # --- pieces -------------------------------------------------------------------------------------------

    def _fault(self, point: str) -> None:
        if self.deps.fault is not None:
            self.deps.fault(point)

    def _make_store(self) -> SessionStore:
        if self.settings.session_store == "local":
            from peerbot.session.local import LocalSessionStore

            return LocalSessionStore(self.settings.session_dir)
        from peerbot.session.gcs import GcsSessionStore, make_client

        return GcsSessionStore(
            self.settings.gcs_bucket_name, client=make_client(self.settings.storage_emulator_host)
        )

    async def _load(self, store: SessionStore) -> Session | None:
        """Read the session: the store's outages are retried with backoff and jitter (tenacity), counted,
        and fed to the ``gcs`` breaker; a damaged session is not retried."""
        from peerbot.resilience import call_with_retries

        def on_retry(dependency: str, error: BaseException, wait: float) -> None:
            self.stats.retry(dependency)
            log.warning("session_load_failed", error=str(error), wait=round(wait, 2))

        try:
            session: Session | None = await call_with_retries(
                Dependency.GCS,
                lambda: asyncio.to_thread(store.load, self.key),
                retry_on=lambda error: not isinstance(error, SessionError),
                attempts=len(LOAD_RETRY_DELAYS) + 1,
                first=LOAD_RETRY_DELAYS[0],
                maximum=LOAD_RETRY_DELAYS[-1],
                breaker=self.breakers[Dependency.GCS],
                on_retry=on_retry,
                sleep=self.deps.sleep,
                seconds_left=self.deadline.seconds_left,
            )
            return session
        except SessionError as error:
            raise StorageFailure(
                ErrorKind.STORAGE,
                "I could not read this thread's saved session: it is damaged, or a newer Peerbot wrote it.",
                "Start a new thread, or ask a Peerbot administrator to restore the session (details below).",
                detail=str(error),
            ) from error
        except Exception as last:
            raise StorageFailure(
                ErrorKind.STORAGE,
                "The session store is not answering, so I could not restore this thread.",
                "Nothing was changed. Reply in this thread in a few minutes to try again.",
                detail=self.redact(f"{type(last).__name__}: {last}"),
            ) from last

    def _answered_bar(self, session: Session | None) -> str | None:
        candidates = [self.pointers.peerbot_answered_ts]
        if session is not None:
            candidates.append(session.answered_ts)
            if session.resume is not None and session.resume.details.get("includedTs"):
                candidates.append(str(session.resume.details["includedTs"]))
        known = [ts for ts in candidates if ts]
        return max(known, key=ts_value) if known else None

    def _resume_state(self, reason: str, *, tool_calls: int = 0, error: str | None = None) -> ResumeState:
        assert self.progress is not None
        details: dict[str, Any] = {}
        if self.included_ts:
            details["includedTs"] = self.included_ts
        if error:
            details["error"] = error
        return ResumeState(
            reason=reason,
            requested_ts=self.pointers.peerbot_requested_ts,
            status_message_ts=self.progress.status_ts,
            turn=self.pointers.peerbot_turn,
            tool_calls=tool_calls,
            details=details,
        )

    def _claude(self) -> Any:
        from peerbot.worker.model import MAX_ATTEMPTS, CircuitBreaker, Claude

        client = self.deps.anthropic
        if client is None:
            import anthropic

            client = anthropic.AsyncAnthropic(
                api_key=self.settings.anthropic_api_key.get_secret_value(),
                base_url=self.settings.anthropic_base_url,
                max_retries=0,
            )
            self._owned.append(client)
        progress = self.progress
        assert progress is not None

        def on_retry(what: str, wait: float) -> None:
            # The honest degraded-mode message: what is wrong, and for how long I will keep trying.
            self.stats.retry(Dependency.ANTHROPIC)
            left = max(0.0, self.deadline.seconds_left())
            progress.doing(
                f"Claude is overloaded right now; trying again in {wait:.0f}s "
                f"(I will keep trying for up to {_span(left)} more)"
            )

        return Claude(
            client,
            model=self.settings.anthropic_model,
            summary_model=self.settings.anthropic_summary_model,
            max_tokens=self.settings.anthropic_max_tokens,
            breaker=self.breakers.add(CircuitBreaker()),
            max_attempts=self.deps.claude_max_attempts or MAX_ATTEMPTS,
            sleep=self.deps.sleep,
            seconds_left=self.deadline.seconds_left,
            on_retry=on_retry,
            redact=self.redact,
        )

    def _github(self) -> Any:
        if self.deps.github is not None:
            return self.deps.github
        from github import Auth, Github, GithubRetry

        client = Github(
            base_url=self.settings.github_api_url,
            auth=Auth.Token(self.settings.github_token.get_secret_value()),
            timeout=30,
            # A secondary rate limit asks for a minute's wait; a turn has five, so give up sooner.
            retry=GithubRetry(total=3, secondary_rate_wait=15),
        )
        self._owned.append(client)
        return client

    def _repository_host(self) -> Any:
        """GitHub, or bare git repositories in ``REPOSITORIES_DIR`` (``REPOSITORY_HOST=local``)."""
        if self.settings.repository_host == "local":
            from peerbot.worker.local_host import LocalHost

            return LocalHost(
                self.settings.repositories_dir,
                self.settings.github_organization,
                env=tool_environment(self.deps.env, workspace=self.workspace),
            )
        from peerbot.worker.repository import GitHubHost

        return GitHubHost(self._github(), self.settings.github_organization)

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call`` (GitHub), tried again with backoff and jitter while it fails with a transient outage
        (tenacity, at most ``len(OUTAGE_RETRY_DELAYS) + 1`` attempts), behind the ``github`` breaker."""
        from peerbot.resilience import CircuitOpen, call_with_retries

        progress = self.progress

        def on_retry(dependency: str, error: BaseException, wait: float) -> None:
            self.stats.retry(dependency)
            log.info("retrying_after_outage", error=str(error), wait=round(wait, 2))
            if progress is not None:
                progress.doing(f"GitHub is not answering; trying again in {wait:.0f}s")

        try:
            return await call_with_retries(
                Dependency.GITHUB,
                call,
                retry_on=lambda error: isinstance(error, TurnFailure) and error.transient,
                attempts=len(OUTAGE_RETRY_DELAYS) + 1,
                first=OUTAGE_RETRY_DELAYS[0],
                maximum=OUTAGE_RETRY_DELAYS[-1],
                breaker=self.breakers[Dependency.GITHUB],
                on_retry=on_retry,
                sleep=self.deps.sleep,
                seconds_left=self.deadline.seconds_left,
            )
        except CircuitOpen as error:
            raise RepositoryFailure(
                ErrorKind.GITHUB,
                "GitHub is unreachable right now: it failed several times in a row, so I stopped trying.",
                "Your work is saved and will be pushed on your next message: reply here in a few minutes. "
                "https://www.githubstatus.com says whether there is an incident.",
                detail=self.redact(str(error)),
            ) from error

    async def _open_repository(self, wanted: str | None, *, clone: bool) -> None:
        from peerbot.worker.repository import Checkout, Git

        assert self.progress is not None
        local = self.settings.repository_host == "local"
        self.host = self._repository_host()
        self.progress.doing(f"opening {wanted or 'your repository'} {'locally' if local else 'on GitHub'}")
        host = self.host
        self.info = await self._retrying(
            lambda: asyncio.to_thread(host.resolve, wanted, self.pointers.peerbot_user, self.branch)
        )
        self.branch_pushed = self.info.branch_exists
        if not clone:
            return
        git = Git(
            env=tool_environment(self.deps.env, workspace=self.workspace),
            token="" if local else self.settings.github_token.get_secret_value(),
            redact=self.redact,
        )
        if self.repo_dir.exists():
            shutil.rmtree(self.repo_dir)
        self.workspace.mkdir(parents=True, exist_ok=True)
        checkout = self.checkout = Checkout(git, self.info, self.branch, self.repo_dir)
        self.progress.doing(f"cloning {self.info.full_name}")

        async def clone_once() -> None:
            if self.repo_dir.exists():
                shutil.rmtree(self.repo_dir)
            await checkout.clone()

        await self._retrying(clone_once)
        created = " (new)" if self.info.created else ""
        self.progress.done(f"cloned {self.info.full_name}{created} on {self.branch}")

    async def _save_attachments(self, messages: Sequence[ThreadMessage]) -> dict[str, SavedFile]:
        assert self.thread is not None
        saved: dict[str, SavedFile] = {}
        for message in messages:
            for shared in message.files:
                data = await self.thread.download(shared)
                if data is None:
                    saved[shared.id] = SavedFile(
                        None, "not downloaded (too big, or Slack did not hand it over)"
                    )
                    continue
                self.attachments_dir.mkdir(parents=True, exist_ok=True)
                path = self.attachments_dir / f"{safe_name(shared.id)}-{safe_name(shared.name)}"
                path.write_bytes(data)
                kind = "binary" if b"\x00" in data[:8192] else "text"
                saved[shared.id] = SavedFile(path, f"saved at {path} ({kind})")
        return saved

    async def _help(self, messages: Sequence[ThreadMessage]) -> TurnResult:
        from peerbot.slack_messages import help_message

        assert self.thread is not None
        assert self.progress is not None
        assert self.checkpointer is not None
        await self.thread.post(
            help_message(
                trigger_phrase=self.settings.slack_trigger_phrase,
                timeout_minutes=self.settings.session_timeout_minutes,
                organization=self.settings.github_organization,
            )
        )
        newest = messages[-1].ts
        await self.checkpointer.record([], SessionChanges(answered_ts=newest))
        await self.checkpointer.finish()
        await self.progress.finish(Phase.SUCCEEDED, "nothing to do: sent how to use Peerbot")
        return self._result(Outcome.DONE, answered_ts=newest)

    async def _push(self, message: str) -> PushReport:
        from peerbot.worker.repository import GitCommandError

        assert self.thread is not None
        checkout = self.checkout
        if checkout is None:
            return PushReport()
        try:
            await checkout.commit_all(message)
            if not await checkout.unpushed():
                return PushReport()
        except GitCommandError as error:
            return PushReport(error=f"I could not commit the changes: {error.output or error}")
        last: GitCommandError | None = None
        for delay in (*OUTAGE_RETRY_DELAYS, None):
            try:
                await checkout.push()
                self.branch_pushed = True
                return PushReport(pushed=True)
            except GitCommandError as error:
                last = error
                log.warning("push_failed", error=error.output)
                if delay is None or delay >= self.deadline.hard_seconds_left():
                    break
                self.stats.retry(Dependency.GITHUB)
                await self.deps.sleep(delay)
        uploaded = False
        with contextlib.suppress(GitCommandError):
            patch = await checkout.patch()
            uploaded = await self.thread.upload(
                patch,
                filename=f"{safe_name(self.branch)}.patch",
                title="Changes not pushed (git am applies them)",
            )
        return PushReport(error=last.output if last else "unknown error", patch_uploaded=uploaded)

    def _push_note(self, report: PushReport) -> str:
        if report.error is None:
            return ""
        kept = (
            "The changes are attached to this thread as a patch (`git am` applies it)."
            if report.patch_uploaded
            else "The changes could not be kept: I will redo them when you reply."
        )
        return f"\n\n⚠️ *I could not push to GitHub* ({report.error[:300]}). {kept} Reply here to try again."

    def _pr_body(self, request: str, answer: str) -> str:
        turns = (self.session.turns if self.session else 0) + 1
        quoted = (
            "\n".join("> " + line for line in request.strip()[:PR_REQUEST_EXCERPT].splitlines())
            or "> (continued)"
        )
        return self.redact(
            "Peerbot works on this branch for a Slack thread (channel "
            f"`{self.pointers.peerbot_channel}`, thread "
            f"`{self.pointers.peerbot_thread_ts}`) and updates this description after every turn.\n\n"
            f"### Latest request\n{quoted}\n\n"
            f"### Latest answer\n{answer.strip()[:PR_ANSWER_EXCERPT]}\n\n"
            f"_Turn {turns} · branch `{self.branch}`_"
        )

    async def _deliver(self, outcome: AgentOutcome, *, request_text: str) -> TurnResult:
        from peerbot.slack_messages import AnswerFooter, answer_messages

        assert self.thread is not None
        assert self.progress is not None
        assert self.checkpointer is not None
        progress = self.progress
        answer = outcome.answer.strip() or "(Claude finished without writing an answer.)"
        notes = ""
        if self.checkout is not None:
            progress.doing("pushing the changes")
            title = (request_text.strip().splitlines() or ["Work from Slack"])[0]
            title = re.sub(r"^@peerbot\w*[:,]?\s*", "", title, flags=re.IGNORECASE) or "Work from Slack"
            report = await self._push(f"Peerbot: {title[:60]}")
            await self.checkpointer.record([], SessionChanges(resume=self._resume_state(DELIVERING)))
            self._fault("deliver:pushed")
            notes += self._push_note(report)
            if report.pushed:
                progress.done(f"pushed {self.branch}")
        else:
            title = "Work from Slack"
        if self.branch_pushed and self.host is not None and self.info is not None and not self.info.empty:
            progress.doing("updating the pull request")
            host, info = self.host, self.info
            body = self._pr_body(request_text, answer)
            try:
                self.pull = await self._retrying(
                    lambda: asyncio.to_thread(
                        host.ensure_pull_request, info, self.branch, title=title, body=body
                    )
                )
                progress.done(
                    f"{'opened' if self.pull.created else 'updated'} pull request #{self.pull.number}"
                )
            except RepositoryFailure as failure:
                notes += f"\n\n⚠️ I could not open or update the pull request: {failure.what_happened}"
        total = self.accounting.total
        footer = AnswerFooter(
            input_tokens=total.input,
            output_tokens=total.output,
            cache_read_tokens=total.cache_read,
            cache_write_tokens=total.cache_write,
            cost_usd=self.accounting.cost_usd,
            duration_seconds=self.deadline.elapsed(),
            branch=_link(self.branch, self.info.branch_url(self.branch))
            if self.branch_pushed and self.info
            else None,
            pull_request=_link(f"#{self.pull.number}", self.pull.url) if self.pull else None,
        )
        rendered = answer_messages(self.redact(answer + notes), footer=footer)
        progress.doing("posting the answer")
        self._fault("deliver:before-post")
        for message in rendered.messages:
            await self.thread.post(message)
        if rendered.truncated:
            await self.thread.upload(rendered.overflow, filename="answer.md", title="The rest of the answer")
        self._fault("deliver:posted")
        changes = SessionChanges(
            answered_ts=self.included_ts,
            turns=(self.session.turns if self.session else 0) + 1,
            resume=None,
        )
        await self.checkpointer.record([], changes)
        if not await self.checkpointer.finish():
            raise StorageFailure(
                ErrorKind.STORAGE,
                "I answered, but could not save this turn to the thread's session.",
                "The next reply will re-read your messages; if the session store stays down, tell a Peerbot "
                "administrator.",
                detail=self.checkpointer.last_error,
            )
        self._fault("deliver:saved")
        await progress.finish(Phase.SUCCEEDED)
        return self._result(Outcome.DONE, answered_ts=self.included_ts)

    async def _pause(self, outcome: AgentOutcome) -> TurnResult:
        from peerbot.slack_messages import paused_message

        assert self.thread is not None
        assert self.progress is not None
        assert self.checkpointer is not None
        self.progress.doing("pausing: saving and pushing the work in progress")
        report = await self._push("Peerbot: work in progress (paused at the time limit)")
        resume = self._resume_state(PAUSED_AT_DEADLINE, tool_calls=outcome.tool_calls)
        await self.checkpointer.record([], SessionChanges(resume=resume))
        if not await self.checkpointer.finish():
            raise StorageFailure(
                ErrorKind.STORAGE,
                "I reached the time limit and could not save where I stopped.",
                "Reply in this thread to start again from the last saved step.",
                detail=self.checkpointer.last_error,
            )
        branch = (
            _link(self.branch, self.info.branch_url(self.branch))
            if self.branch_pushed and self.info
            else None
        )
        message = paused_message(
            conversation=self.pointers.peerbot_conversation,
            limit_minutes=self.settings.session_timeout_minutes,
            branch=branch,
        )
        await self.thread.post(message)
        note = self._push_note(report)
        if note:
            await self.thread.post({"text": note.strip()})
        await self.progress.finish(Phase.TIMED_OUT)
        return self._result(Outcome.PAUSED, answered_ts=self.included_ts)

    async def _fail(self, failure: TurnFailure) -> TurnResult:
        from peerbot.slack_messages import error_message

        log.warning(
            "turn_failed", kind=failure.kind.value, error=failure.what_happened, detail=failure.detail
        )
        conflict = isinstance(failure, StorageFailure) and "Another Peerbot worker" in failure.what_happened
        if self.turn_recorded and not conflict:
            with contextlib.suppress(Exception):
                await self._push("Peerbot: work in progress (stopped by an error)")
            if self.checkpointer is not None and self.progress is not None:
                with contextlib.suppress(Exception):
                    resume = self._resume_state(FAILED, error=failure.what_happened)
                    await self.checkpointer.record([], SessionChanges(resume=resume))
                    await self.checkpointer.finish()
        if self.thread is not None:
            try:
                await self.thread.post(
                    error_message(failure.what_happened, failure.what_to_do, detail=failure.detail)
                )
            except Exception as slack_failure:
                log.warning("error_message_not_posted", error=str(slack_failure))
        if self.progress is not None:
            await self.progress.finish(Phase.FAILED)
        error = TurnError(
            kind=failure.kind, message=self.redact(f"{failure.what_happened} {failure.what_to_do}")
        )
        return self._result(Outcome.FAILED, error=error)

    async def _after_termination(self) -> None:
        """SIGTERM: save what is pending and push work in progress, each within a few seconds."""
        log.warning("terminated", note="saving and pushing before the pod stops")
        if self.checkpointer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TERMINATION_FLUSH_SECONDS):
                    await self.checkpointer.flush()
        if self.turn_recorded:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TERMINATION_PUSH_SECONDS):
                    await self._push("Peerbot: work in progress (worker stopped)")
        if self.progress is not None:
            await self.progress.stop()
            if self.progress.reaction_ts:
                with contextlib.suppress(Exception):
                    await self.progress.thread.react(self.progress.reaction_ts, "gear", remove=True)

    def _result(
        self, outcome: Outcome, *, answered_ts: str | None = None, error: TurnError | None = None
    ) -> TurnResult:
        total = self.accounting.total
        return TurnResult(
            outcome=outcome,
            answeredTs=answered_ts,
            tokens=Tokens(
                input=total.input,
                output=total.output,
                cacheRead=total.cache_read,
                cacheWrite=total.cache_write,
            ),
            costUSD=round(self.accounting.cost_usd, 6),
            pullRequest=self.pull.url if self.pull else None,
            branch=self.branch if self.branch_pushed else None,
            steps=self.agent.model_steps if self.agent is not None else 0,
            error=error,
            stats=self.stats.result(
                duration_seconds=self.deadline.elapsed(), breakers_opened=self.breakers.opened()
            ),
        )


def _link(text: str, url: str) -> Any:
    """A :class:`~peerbot.slack_messages.Link` for the thread. Slack links only web addresses, so a path
    (the local repository host's branches and pull requests) is shown after the label instead."""
    from peerbot.slack_messages import Link

    return Link(text, url) if url.startswith(("https://", "http://")) else Link(f"{text} ({url})", url)


def _span(seconds: float) -> str:
    """``2 minutes``, ``40 seconds``: how long, for a person."""
    if seconds >= 90:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


def exit_code(result: TurnResult | None) -> int:
    """The worker's exit status for a result (143, as for SIGTERM, when there is none)."""
    if result is None:
        return 143
    return {Outcome.DONE: ExitCode.DONE, Outcome.PAUSED: ExitCode.PAUSED}.get(result.outcome, ExitCode.FAILED)


def write_result(path: Path, result: TurnResult) -> None:
    """Write the result document where the operator (or whoever ran the worker) reads it."""
    try:
        path.write_text(result.to_document())
    except OSError as error:
        log.error("result_not_written", path=str(path), error=str(error))
