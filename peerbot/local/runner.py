"""The local runner: the operator, the Job controller and the kubelet of ``peerbot local``, in one object.

It reads each Conversation from its file (:mod:`peerbot.local.store`) and the turns it runs
(:mod:`peerbot.local.jobs`), calls **the same pure planner as the operator**
(:func:`peerbot.planner.plan`) and applies the actions the way the operator does: a turn becomes a
``peerbot worker`` process, a status patch a merge into the file, a notice a Slack message
(:func:`peerbot.operator.notify.notify_thread`). What the Job controller and the kubelet do in a cluster
it does too:

- **Deadline**: a worker still running ``SESSION_TIMEOUT_MINUTES`` after it started gets SIGTERM, then
  SIGKILL after :data:`KILL_GRACE_SECONDS` (``activeDeadlineSeconds`` and the pod's grace period); the
  worker pauses itself shortly before, so normally it is gone by then.
- **Outcome**: the worker's result document (``PEERBOT_RESULT_FILE``) is read like a termination message
  and its exit like a container's; the planner decides what they mean.
- **Cancel**: a deleted Job's worker gets SIGTERM (it saves and pushes first), and the record goes.
- **One process group per worker** (its own session), so Ctrl-C in the terminal reaches only
  ``peerbot local``, which then stops each worker with SIGTERM, and anything the agent started goes with
  its worker.

Stopping and starting again (``docs/local.md``): on :meth:`LocalRunner.stop` running workers get
SIGTERM, save their steps and push their work, and their turns are marked *interrupted*; the next
:meth:`LocalRunner.start` runs them again from the saved session (a new process, a fresh workspace and a
full time limit, as a new pod would get). A worker that outlived a runner killed without warning is
adopted and watched until it ends; one that vanished unseen is a lost pod, which the planner retries once.

Each worker process holds an exclusive ``flock`` on ``jobs/<job>.alive`` for as long as it lives (the
descriptor is handed to it at start), which is how a restarted runner tells a live worker from a dead one
without trusting a process id that may have been reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError
from slack_sdk.web.async_client import AsyncWebClient

from peerbot import constants
from peerbot.conversation import Conversation, Phase
from peerbot.dispatcher.store import StoreError
from peerbot.local.jobs import (
    DEADLINE_EXCEEDED,
    NODE_LOST,
    JobRecord,
    JobState,
    exit_code_for,
    exit_code_of,
    job_view,
    worker_environment,
)
from peerbot.local.settings import REPOSITORIES_FOLDER
from peerbot.local.store import ConversationFiles, NotFoundError
from peerbot.logs import get_logger
from peerbot.operator.notify import notify_thread
from peerbot.planner import (
    ClusterView,
    DeleteConversation,
    DeleteJob,
    Notify,
    PatchStatus,
    Plan,
    PlannerSettings,
    RecordEvent,
    StartTurn,
    TurnRequest,
    plan,
    plan_invalid_spec,
    spec_problems,
    ts_value,
)
from peerbot.result import TurnResult

log = get_logger(__name__)

#: Kubernetes' default ``terminationGracePeriodSeconds``: SIGTERM, then SIGKILL this much later. The
#: worker needs at most about 15 s after SIGTERM (save steps, push work in progress).
KILL_GRACE_SECONDS: Final = 30.0
#: Finished turns' records and logs are kept this long (a Job's ``ttlSecondsAfterFinished``).
JOB_TTL: Final = timedelta(hours=1)
#: A worker adopted from an earlier runner is not our child (no exit status to wait for): its liveness
#: lock is looked at this often.
ORPHAN_POLL_SECONDS: Final = 0.5
#: After a pass that changed something, the next pass runs at once (the planner moves one step at a
#: time), but never more than this many times in a row before waiting for the timer or an event.
MAX_IMMEDIATE_PASSES: Final = 10
#: A Slack notice on the way out must not hold up stopping.
NOTIFY_TIMEOUT_SECONDS: Final = 5.0
#: What `peerbot worker` is, here: this interpreter, so it is the same installation.
DEFAULT_WORKER_COMMAND: Final = (sys.executable, "-m", "peerbot.cli", "worker")

INTERRUPTED_NOTICE: Final = (
    "⏸️ Peerbot was stopped on the computer it runs on, in the middle of this turn. Everything up to its "
    "last completed step is saved; the turn picks up from there as soon as Peerbot is started again."
)

# Why the runner stopped a worker (the first reason wins).
_DELETED: Final = "Deleted"
_INTERRUPTED: Final = "Interrupted"


class RunnerBusyError(Exception):
    """Another ``peerbot local`` uses the same folder."""


@dataclass(frozen=True)
class RunnerFolders:
    """Where ``peerbot local`` keeps everything, under one folder (``PEERBOT_LOCAL_DIR``)."""

    root: Path

    @property
    def conversations(self) -> Path:
        return self.root / "conversations"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def repositories(self) -> Path:
        """The bare git repositories of the local repository host (used without ``GITHUB_TOKEN``)."""
        return self.root / REPOSITORIES_FOLDER

    @property
    def lock(self) -> Path:
        return self.root / "runner.lock"

    def record(self, job: str) -> Path:
        return self.jobs / f"{job}.json"

    def result(self, job: str) -> Path:
        return self.jobs / f"{job}.result.json"

    def log(self, job: str) -> Path:
        return self.jobs / f"{job}.log"

    def alive(self, job: str) -> Path:
        return self.jobs / f"{job}.alive"

    def workspace(self, job: str) -> Path:
        return self.workspaces / job

    def create(self) -> None:
        for folder in (self.root, self.conversations, self.jobs, self.sessions, self.workspaces):
            folder.mkdir(parents=True, exist_ok=True)


# --- Worker processes -------------------------------------------------------------------------------------


class _Process(Protocol):
    #: ``None`` for a worker adopted before its id was recorded: it can be watched, not signalled.
    pid: int | None

    async def wait(self) -> int | None:
        """Wait for the end; the exit code as a container reports it, or ``None`` when unknown."""
        ...


class _Child:
    """A worker this runner started: its exit status is ours to wait for."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid: int | None = process.pid

    async def wait(self) -> int | None:
        return exit_code_of(await self.process.wait())


class _Orphan:
    """A worker started by an earlier runner: alive while it holds its liveness lock."""

    def __init__(self, pid: int | None, alive: Path) -> None:
        self.pid = pid
        self.alive = alive

    async def wait(self) -> int | None:
        # Not our child: no exit status and no event to wait for, only the lock to look at.
        while is_alive(self.alive):  # noqa: ASYNC110
            await asyncio.sleep(ORPHAN_POLL_SECONDS)
        return None


def is_alive(alive: Path) -> bool:
    """True while some process holds the lock on ``alive`` (the worker it was handed to)."""
    try:
        fd = os.open(alive, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


@dataclass
class _Running:
    job: str
    process: _Process
    stop_reason: str | None = None
    task: asyncio.Task[None] | None = None
    killer: asyncio.Task[None] | None = None


def _signal(pid: int | None, signum: int, *, group: bool = False) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- The runner -------------------------------------------------------------------------------------------


@dataclass
class LocalRunner:
    """Plans every Conversation in ``folders`` and runs its turns as local worker processes.

    Args:
        folders: where Conversations, turn records, sessions and workspaces live.
        files: the Conversations (shared with the dispatcher's store).
        slack: posts the notices the planner asks for (the worker speaks for itself otherwise).
        planner_settings: the operator's planner settings (time limit, concurrency, retention).
        base_env: the environment workers start from (settings and tokens; pointers are added per turn).
        worker_command: how to start ``peerbot worker``.
        timeout: the time limit of one run of a turn (``SESSION_TIMEOUT_MINUTES``).
        kill_grace: seconds between SIGTERM and SIGKILL.
        interval: seconds between passes when nothing happens (the operator's timer).
        durable: flush records to disk before moving them into place.
        reactions: whether notices add their reaction (``ENABLE_STATUS_REACTIONS``).
    """

    folders: RunnerFolders
    files: ConversationFiles
    slack: AsyncWebClient
    planner_settings: PlannerSettings
    base_env: Mapping[str, str]
    worker_command: Sequence[str] = DEFAULT_WORKER_COMMAND
    timeout: timedelta | None = None
    kill_grace: float = KILL_GRACE_SECONDS
    interval: float = constants.RECONCILE_INTERVAL_SECONDS
    durable: bool = True
    #: ENABLE_STATUS_REACTIONS: whether notices add their reaction.
    reactions: bool = True
    clock: Callable[[], datetime] = _utc_now
    _records: dict[str, JobRecord] = field(default_factory=dict)
    _running: dict[str, _Running] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _recheck_at: datetime = field(default_factory=lambda: datetime.max.replace(tzinfo=UTC))
    _loop_task: asyncio.Task[None] | None = None
    _lock_fd: int | None = None
    _reported: set[str] = field(default_factory=set)
    _passed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def time_limit(self) -> timedelta:
        return self.timeout or timedelta(minutes=self.planner_settings.session_timeout_minutes)

    # --- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the folder, pick up what an earlier run left, and start planning."""
        self.folders.create()
        self._take_folder()
        try:
            await self._recover()
        except BaseException:
            self._release_folder()
            raise
        self._loop_task = asyncio.create_task(self._loop(), name="local-runner")
        log.info("runner started", folder=str(self.folders.root), running=len(self._running))

    async def stop(self, *, force: asyncio.Event | None = None) -> None:
        """Stop planning; give every running worker SIGTERM so it saves and pushes, and wait for it.

        Each worker gets :attr:`kill_grace` seconds, and SIGKILL after that; setting ``force`` (a second
        Ctrl-C) sends SIGKILL at once. Turns stopped this way run again at the next :meth:`start`.
        """
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        running = list(self._running.values())
        for entry in running:
            self._terminate(entry, _INTERRUPTED)
        pending = {entry.task for entry in running if entry.task is not None}
        if pending:
            log.info("stopping workers", count=len(pending), grace_seconds=self.kill_grace)
        while pending:
            waiters: set[asyncio.Future[Any]] = set(pending)
            forced = asyncio.ensure_future(force.wait()) if force is not None else None
            if forced is not None:
                waiters.add(forced)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if forced is not None:
                if forced in done:
                    log.warning("stopping workers at once")
                    for entry in running:
                        _signal(entry.process.pid, signal.SIGKILL, group=True)
                    force = None
                else:
                    forced.cancel()
            pending = {task for task in pending if not task.done()}
        interrupted = [self._records[e.job] for e in running if e.job in self._records]
        await self._tell_interrupted([r for r in interrupted if r.state == JobState.INTERRUPTED])
        self._release_folder()
        log.info("runner stopped")

    def poke(self, name: str | None = None) -> None:
        """Something changed (a Conversation was written, a worker ended): plan again now."""
        self._wake.set()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float,  # noqa: ASYNC109 (a bounded wait by design)
        description: str = "the condition",
    ) -> None:
        """Wait until ``predicate()`` holds, checking it after every planning pass (tests, the demo)."""
        try:
            async with asyncio.timeout(timeout), self._passed:
                await self._passed.wait_for(predicate)
        except TimeoutError:
            raise TimeoutError(f"{description} did not happen within {timeout:g} s") from None

    def records(self) -> list[JobRecord]:
        """The turns the runner knows about (for tests and status output)."""
        return sorted(self._records.values(), key=lambda r: (r.conversation, r.turn, r.attempt))

    def _take_folder(self) -> None:
        fd = os.open(self.folders.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunnerBusyError(
                f"another peerbot local (process {owner}) is using {self.folders.root}: stop it first, "
                "or set PEERBOT_LOCAL_DIR to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_folder(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _recover(self) -> None:
        """Read the turn records an earlier run left and bring each to where it really is."""
        for path in sorted(self.folders.jobs.glob("*.json")):
            if path.name.endswith(".result.json"):
                continue
            try:
                record = JobRecord.model_validate_json(path.read_bytes())
            except (ValueError, ValidationError) as error:
                log.warning("turn record damaged; ignored", path=str(path), error=str(error)[:200])
                continue
            self._records[record.name] = record
        for record in list(self._records.values()):
            if record.state == JobState.FINISHED:
                continue
            alive = self.folders.alive(record.name)
            if await asyncio.to_thread(is_alive, alive):
                log.info("adopting a worker still running", job=record.name, pid=record.pid)
                entry = self._watch(record.name, _Orphan(record.pid, alive), record.deadline)
                if record.state == JobState.DELETING:
                    self._terminate(entry, _DELETED)
                continue
            if record.state == JobState.DELETING:
                await self._forget(record.name)
                continue
            document = self._read_result(record.name)
            if TurnResult.parse(document) is not None:
                await self._finish(record.name, None, document, None)
            elif record.state == JobState.INTERRUPTED:
                log.info("continuing an interrupted turn", job=record.name, conversation=record.conversation)
                spec = await self._current_spec(record.conversation)
                await self._launch(record, spec)
            else:
                # It ended while nobody watched (the runner was killed and its workers with it).
                await self._finish(record.name, None, document, NODE_LOST)

    # --- the loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        immediate = 0
        while True:
            self._wake.clear()
            changed = False
            try:
                changed = await self.reconcile_all()
            except Exception:
                log.exception("planning pass failed; trying again at the next one")
            async with self._passed:
                self._passed.notify_all()
            if changed and immediate < MAX_IMMEDIATE_PASSES:
                immediate += 1
                continue
            immediate = 0
            # Plan again at the interval, or sooner when the planner is waiting out a grace period.
            until_recheck = (self._recheck_at - datetime.now(UTC)).total_seconds()
            self._recheck_at = datetime.max.replace(tzinfo=UTC)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(self.interval, until_recheck))):
                    await self._wake.wait()

    async def reconcile_all(self) -> bool:
        """One planning pass over every Conversation; ``True`` when anything was done."""
        names = await asyncio.to_thread(self.files.names)
        bodies: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                body = await asyncio.to_thread(self.files.get, name)
            except StoreError as error:
                if name not in self._reported:
                    self._reported.add(name)
                    log.error("conversation file damaged; skipped", conversation=name, error=str(error))
                continue
            if body is not None:
                bodies[name] = body
        queue = tuple(
            name
            for _, name in sorted(
                (ts_value((body.get("spec") or {}).get("requestedTs")), name)
                for name, body in bodies.items()
                if (body.get("status") or {}).get("phase") == Phase.QUEUED.value
            )
        )
        changed = False
        for name, body in bodies.items():
            try:
                changed = await self._reconcile(name, body, queue) or changed
            except StoreError as error:
                log.warning("could not apply the plan", conversation=name, error=str(error))
        changed = await self._collect(bodies) or changed
        return changed

    async def _reconcile(self, name: str, body: dict[str, Any], queue: tuple[str, ...]) -> bool:
        now = self.clock()
        problem = spec_problems(body.get("spec"))
        if problem is not None:
            result = plan_invalid_spec(problem, body.get("status"), now)
            await self._apply(name, None, result)
            return bool(result)
        try:
            conversation = Conversation.model_validate(body)
        except ValidationError as error:
            if name not in self._reported:
                self._reported.add(name)
                log.error("conversation cannot be read; skipped", conversation=name, error=str(error)[:300])
            return False
        jobs = [job_view(record) for record in self._records.values() if record.conversation == name]
        cluster = ClusterView()
        if self.planner_settings.max_concurrent_jobs:
            active = sum(1 for record in self._records.values() if record.active)
            cluster = ClusterView(running_jobs=active, queue=queue)
        result = plan(conversation, jobs, now, self.planner_settings, cluster)
        if result.recheck_after is not None:
            self._recheck_at = min(self._recheck_at, now + result.recheck_after)
        await self._apply(name, conversation, result)
        return bool(result)

    async def _apply(self, name: str, conversation: Conversation | None, result: Plan) -> None:
        bound = log.bind(conversation=name)
        for action in result.actions:
            match action:
                case StartTurn(request=request):
                    started = await self._start(request)
                    bound.info("turn started" if started else "turn already started", job=request.job_name)
                case PatchStatus(patch=patch):
                    try:
                        await asyncio.to_thread(self.files.patch_status, name, patch)
                    except NotFoundError:
                        return  # deleted meanwhile: nothing left to apply
                case DeleteJob(name=job, reason=reason):
                    await self._delete_job(job)
                    bound.info("job deleted", job=job, reason=reason)
                case Notify() if conversation is not None:
                    await notify_thread(
                        self.slack,
                        conversation.spec.channel,
                        conversation.spec.thread_ts,
                        action,
                        reactions=self.reactions,
                    )
                case RecordEvent(type=kind, reason=reason, message=message):
                    (bound.warning if kind == "Warning" else bound.info)(
                        "event", reason=reason, message=message
                    )
                case DeleteConversation(reason=reason):
                    await asyncio.to_thread(self.files.delete, name)
                    bound.info("conversation deleted", reason=reason)
                case _:
                    pass

    async def _collect(self, bodies: Mapping[str, dict[str, Any]]) -> bool:
        """Garbage collection: turns of deleted Conversations, and finished turns past their TTL."""
        now = self.clock()
        changed = False
        for record in list(self._records.values()):
            body = bodies.get(record.conversation)
            if body is None and record.active and record.name in self._running:
                self._terminate(self._running[record.name], _DELETED)  # its owner is gone
                changed = True
            if record.state != JobState.FINISHED:
                continue
            status = (body or {}).get("status") or {}
            recorded = (
                body is None
                or status.get("job") != record.name
                or status.get("phase")
                not in (
                    Phase.RUNNING.value,
                    Phase.PENDING.value,
                    Phase.QUEUED.value,
                )
            )
            if body is None or (recorded and record.finished_at and now - record.finished_at > JOB_TTL):
                await self._forget(record.name)
        return changed

    # --- turns ------------------------------------------------------------------------------------------

    async def _current_spec(self, conversation: str) -> dict[str, Any] | None:
        try:
            body = await asyncio.to_thread(self.files.get, conversation)
        except StoreError:
            return None
        return (body or {}).get("spec")

    async def _start(self, request: TurnRequest) -> bool:
        """Start the turn's worker; ``False`` when this Job exists already (started before)."""
        if request.job_name in self._records:
            return False
        record = JobRecord.for_request(request, self.clock())
        self._records[record.name] = record
        await self._launch(record, request.spec.to_api())
        return True

    async def _launch(self, record: JobRecord, current_spec: Mapping[str, Any] | None) -> None:
        name = record.name
        now = self.clock()
        deadline = now + self.time_limit
        workspace = self.folders.workspace(name)
        await asyncio.to_thread(self._fresh_workspace, workspace)
        self.folders.result(name).unlink(missing_ok=True)
        env = worker_environment(
            record.request(current_spec),
            base=self.base_env,
            now=now,
            deadline=deadline,
            timeout_minutes=self.planner_settings.session_timeout_minutes,
            session_dir=self.folders.sessions,
            workspace=workspace,
            result_file=self.folders.result(name),
            repositories_dir=self.folders.repositories,
        )
        # On disk before the process exists: a runner killed right after the start still finds the turn
        # (and its worker, by the liveness lock) when it starts again, instead of starting it twice.
        self._records[name] = record = record.model_copy(
            update={
                "state": JobState.RUNNING,
                "runs": record.runs + 1,
                "pid": None,
                "started_at": now,
                "deadline": deadline,
                "finished_at": None,
                "exit_code": None,
                "reason": None,
                "result": None,
            }
        )
        await self._save(record)
        alive = os.open(self.folders.alive(name), os.O_RDWR | os.O_CREAT, 0o600)
        output = os.open(self.folders.log(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            process = await asyncio.create_subprocess_exec(
                *self.worker_command,
                env=env,
                cwd=workspace,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches peerbot local, not the worker
                pass_fds=(alive,),  # the worker holds the liveness lock for as long as it lives
            )
        except OSError as error:
            os.close(alive)
            log.error("worker could not start", job=name, command=list(self.worker_command), error=str(error))
            await self._finish(name, exit_code_of(127), None, None)
            return
        finally:
            os.close(output)
        os.close(alive)  # the lock stays with the worker's copy of the descriptor
        self._records[name] = record = record.model_copy(update={"pid": process.pid})
        await self._save(record)
        log.info("worker started", job=name, pid=process.pid, run=record.runs, deadline=deadline.isoformat())
        self._watch(name, _Child(process), deadline)

    def _watch(self, name: str, process: _Process, deadline: datetime | None) -> _Running:
        entry = _Running(name, process)
        entry.task = asyncio.create_task(self._supervise(entry, deadline), name=f"worker-{name}")
        self._running[name] = entry
        return entry

    async def _supervise(self, entry: _Running, deadline: datetime | None) -> None:
        ended = asyncio.ensure_future(entry.process.wait())
        try:
            if deadline is not None:
                left = (deadline - self.clock()).total_seconds()
                done, _ = await asyncio.wait({ended}, timeout=max(left, 0.0))
                if not done:
                    log.warning("worker reached the time limit; stopping it", job=entry.job)
                    self._terminate(entry, DEADLINE_EXCEEDED)
            code = await ended
        finally:
            if not ended.done():
                ended.cancel()
            if entry.killer is not None:
                entry.killer.cancel()
            # Like a container ending: whatever the agent left running in the worker's group goes too.
            _signal(entry.process.pid, signal.SIGKILL, group=True)
        self._running.pop(entry.job, None)
        if entry.stop_reason == _DELETED:
            await self._forget(entry.job)
        else:
            document = self._read_result(entry.job)
            reason = DEADLINE_EXCEEDED if entry.stop_reason == DEADLINE_EXCEEDED else None
            interrupted = entry.stop_reason == _INTERRUPTED and TurnResult.parse(document) is None
            if interrupted:
                await self._interrupt(entry.job)
            else:
                if code is None and TurnResult.parse(document) is None and reason is None:
                    reason = NODE_LOST  # an adopted worker that left no result: nobody saw how it ended
                await self._finish(entry.job, code, document, reason)
        self.poke()

    def _terminate(self, entry: _Running, reason: str) -> None:
        """SIGTERM now (the worker saves and pushes), SIGKILL to its group after the grace period."""
        if entry.stop_reason is None:
            entry.stop_reason = reason
        _signal(entry.process.pid, signal.SIGTERM)
        if entry.killer is None:
            entry.killer = asyncio.create_task(self._kill_later(entry))

    async def _kill_later(self, entry: _Running) -> None:
        await asyncio.sleep(self.kill_grace)  # the grace period itself, not a wait for something to happen
        if entry.job in self._running:
            log.warning("worker ignored SIGTERM; killing it", job=entry.job, grace_seconds=self.kill_grace)
            _signal(entry.process.pid, signal.SIGKILL, group=True)

    async def _delete_job(self, name: str) -> None:
        record = self._records.get(name)
        if record is None:
            return
        entry = self._running.get(name)
        if entry is None:
            await self._forget(name)
            return
        self._records[name] = record = record.model_copy(update={"state": JobState.DELETING})
        await self._save(record)
        self._terminate(entry, _DELETED)

    async def _finish(self, name: str, code: int | None, document: str | None, reason: str | None) -> None:
        record = self._records[name]
        result = TurnResult.parse(document)
        if code is None and result is not None:
            code = exit_code_for(result)
        self._records[name] = record = record.model_copy(
            update={
                "state": JobState.FINISHED,
                "exit_code": code,
                "reason": reason,
                "result": document if result is not None else None,
                "finished_at": self.clock(),
            }
        )
        await self._save(record)
        await asyncio.to_thread(shutil.rmtree, self.folders.workspace(name), True)
        log.info(
            "worker ended",
            job=name,
            exit_code=code,
            reason=reason,
            outcome=result.outcome if result else None,
        )

    async def _interrupt(self, name: str) -> None:
        record = self._records[name]
        self._records[name] = record = record.model_copy(update={"state": JobState.INTERRUPTED, "pid": None})
        await self._save(record)
        await asyncio.to_thread(shutil.rmtree, self.folders.workspace(name), True)
        log.info("turn interrupted; it continues at the next start", job=name)

    async def _forget(self, name: str) -> None:
        """Remove everything of one turn (a deleted Job, or a finished one past its TTL)."""
        self._records.pop(name, None)

        def remove() -> None:
            for path in (
                self.folders.record(name),
                self.folders.result(name),
                self.folders.log(name),
                self.folders.alive(name),
            ):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.folders.workspace(name), ignore_errors=True)

        await asyncio.to_thread(remove)

    async def _tell_interrupted(self, records: list[JobRecord]) -> None:
        for record in records:
            spec = record.request().spec
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(NOTIFY_TIMEOUT_SECONDS):
                    await notify_thread(self.slack, spec.channel, spec.thread_ts, Notify(INTERRUPTED_NOTICE))

    # --- files ------------------------------------------------------------------------------------------

    def _read_result(self, name: str) -> str | None:
        try:
            return self.folders.result(name).read_text(errors="replace")
        except FileNotFoundError:
            return None

    async def _save(self, record: JobRecord) -> None:
        data = record.model_dump_json(indent=2).encode() + b"\n"
        await asyncio.to_thread(
            _write_atomically, self.folders.record(record.name), data, durable=self.durable
        )

    @staticmethod
    def _fresh_workspace(workspace: Path) -> None:
        shutil.rmtree(workspace, ignore_errors=True)
        (workspace / "home").mkdir(parents=True)
        (workspace / "tmp").mkdir()
