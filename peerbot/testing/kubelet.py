"""A kubelet for the Kubernetes stand-in: runs each worker Job's container as a local process.

Nothing runs pods in :class:`~peerbot.testing.kubernetes.KubernetesStandIn`. :class:`LocalKubelet` plays
the Job controller and the kubelet for the Jobs that match a label selector, the way ``peerbot demo`` and
end-to-end tests need it::

    async with LocalKubelet(kubernetes, root=tmp_path, image=worker_image()) as kubelet:
        ...  # the operator creates a worker Job
        run = await kubelet.wait_for_run("conv-t1")
        assert run.exit_code == 0

For each new Job it watches (a list, then a watch from its ``resourceVersion``, with the real
``kubernetes_asyncio`` client), it does what a cluster would:

1. **Creates the pod** from the Job's template (:meth:`KubernetesStandIn.start_job`: the same admission
   and validation as the API server; a template it refuses is reported, and the Job never runs).
2. **Builds the container's environment** as the kubelet does: the image's own ``ENV``, then ``envFrom``
   (ConfigMaps and Secrets read from the API server), then ``env`` (plain values, ``configMapKeyRef``,
   ``secretKeyRef``). A missing Secret, ConfigMap or key leaves the container waiting with
   ``CreateContainerConfigError``, exactly what the operator sees in a cluster.
3. **Maps the pod's volumes to folders**: every ``emptyDir`` mount becomes a folder under ``root``, and any
   environment value under a mount path (``HOME=/workspace/home``, ``TMPDIR=/tmp``) is rewritten to the
   folder. The ``terminationMessagePath`` becomes a file in the pod's folder; since a local process cannot
   have it mounted at ``/dev/termination-log``, its path is also passed in ``termination_message_env``.
4. **Runs the container** (:class:`LocalImage` says what the image's entrypoint, environment and working
   folder are) with its output in a log file (what ``kubectl logs`` would show), and stops it with SIGTERM,
   then SIGKILL after the grace period, when the Job's ``activeDeadlineSeconds`` passes.
5. **Reports the outcome** with :meth:`KubernetesStandIn.finish_job`: the exit code and the termination
   message (the file's first 4,096 bytes, as the kubelet keeps), or :meth:`~KubernetesStandIn.time_out_job`.

Not modelled: init containers, more than one container, resource limits, probes, ``$(VAR)`` expansion in
values, restart policies other than ``Never``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from kubernetes_asyncio import client, config

from peerbot.result import TurnResult
from peerbot.testing.kubernetes import JobPodRejected, KubernetesStandIn
from peerbot.testing.watching import ListWatch

#: Kubernetes keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_LIMIT: Final = 4096
#: With ``terminationMessagePolicy: FallbackToLogsOnError``, the kubelet uses the log's last 80 lines.
FALLBACK_LOG_LINES: Final = 80
#: Kubernetes' default ``terminationGracePeriodSeconds``.
DEFAULT_GRACE_SECONDS: Final = 30.0
#: When the kubelet itself stops, running containers get this long after SIGTERM (a worker checkpoints and
#: pushes in well under it), then SIGKILL.
STOP_GRACE_SECONDS: Final = 10.0
#: The selector of Peerbot's worker Jobs (``operator/jobs.py`` labels them so).
WORKER_JOBS: Final = "app.kubernetes.io/component=worker,app.kubernetes.io/managed-by=peerbot-operator"
#: The name of the file the image writes its termination message to, inside the pod's folder.
TERMINATION_FILE: Final = "termination-log"
#: Reasons a container cannot be created, as the kubelet reports them.
CONFIG_ERROR: Final = "CreateContainerConfigError"


class ContainerConfigError(Exception):
    """The container's configuration names something that does not exist (a Secret, a key...)."""


@dataclass(frozen=True)
class LocalImage:
    """What a container image would provide, for a local process: its entrypoint, ``ENV`` and ``WORKDIR``.

    ``workdir`` is a path inside the container; it is mapped to a folder like the volumes are (to the pod's
    own folder when it is not under a mount).
    """

    entrypoint: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None


def worker_image(python: str = sys.executable, *, path: str | None = None) -> LocalImage:
    """Peerbot's worker image (``Dockerfile.worker``) as a local process of this interpreter.

    The entrypoint is ``python -m peerbot.cli`` (the image's ``peerbot``); as in the image, Peerbot's own
    environment comes last on ``PATH``, so ``python3`` in a turn is the machine's, not Peerbot's.
    """
    host_path = path if path is not None else os.environ.get("PATH", os.defpath)
    env = {
        "PATH": os.pathsep.join([host_path, str(Path(python).parent)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": "json",
        "HOME": "/workspace/home",
        "GIT_TERMINAL_PROMPT": "0",
    }
    if os.environ.get("PYTHONPATH"):  # this installation may need it to import peerbot (the image does not)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return LocalImage(entrypoint=(python, "-m", "peerbot.cli"), env=env, workdir="/workspace")


@dataclass(frozen=True)
class PodRun:
    """One Job's container, run to its end (or stopped)."""

    job: str
    pod: str
    command: tuple[str, ...]
    exit_code: int | None
    termination_message: str | None
    log: Path
    folder: Path
    seconds: float
    timed_out: bool = False

    @property
    def result(self) -> TurnResult | None:
        """The worker's result document, when the termination message is one."""
        return TurnResult.parse(self.termination_message)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the container printed (``kubectl logs --tail``)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


EventKind = Literal["seen", "started", "finished", "rejected", "config-error"]


@dataclass(frozen=True)
class KubeletEvent:
    """What the kubelet did, for whoever shows it (the demo prints these)."""

    kind: EventKind
    job: str
    pod: str | None = None
    pid: int | None = None
    run: PodRun | None = None
    message: str | None = None


# --- The container's environment (pure) ----------------------------------------------------------------


def _decoded(data: Mapping[str, Any] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


Lookup = Callable[[str, str], Mapping[str, Any] | None]


def container_environment(
    container: Mapping[str, Any],
    *,
    image_env: Mapping[str, str],
    read: Lookup,
    hostname: str,
    namespace: str = "default",
) -> dict[str, str]:
    """The environment the kubelet gives ``container``: image ``ENV``, then ``envFrom``, then ``env``.

    ``read(kind, name)`` returns a ``secrets`` or ``configmaps`` object of the pod's namespace (or
    ``None``). Raises :class:`ContainerConfigError`, worded as the kubelet words it, for a missing object
    or key that is not ``optional``.
    """
    env = dict(image_env)
    env["HOSTNAME"] = hostname

    def source(kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = read(kind, name)
        if obj is None:
            if optional:
                return None
            singular = "secret" if kind == "secrets" else "configmap"
            raise ContainerConfigError(f'{singular} "{name}" not found')
        if kind == "secrets":
            return _decoded(obj.get("data")) | dict(obj.get("stringData") or {})
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    for item in container.get("envFrom") or []:
        prefix = str(item.get("prefix") or "")
        for key, kind in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = item.get(key)
            if ref:
                values = source(kind, str(ref["name"]), bool(ref.get("optional")))
                env.update({prefix + name: value for name, value in (values or {}).items()})
    for item in container.get("env") or []:
        name = str(item["name"])
        if "valueFrom" not in item:
            env[name] = str(item.get("value", ""))
            continue
        value_from = item["valueFrom"]
        for key, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            ref = value_from.get(key)
            if not ref:
                continue
            optional = bool(ref.get("optional"))
            values = source(kind, str(ref["name"]), optional)
            if values is None:
                break
            if ref["key"] not in values:
                if optional:
                    break
                what = "Secret" if kind == "secrets" else "ConfigMap"
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {what} {namespace}/{ref['name']}"
                )
            env[name] = values[ref["key"]]
            break
    return env


def map_paths(env: Mapping[str, str], mounts: Mapping[str, Path]) -> dict[str, str]:
    """``env`` with every value under a mount path rewritten to the mount's local folder."""
    ordered = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)

    def mapped(value: str) -> str:
        for mount, folder in ordered:
            mount = mount.rstrip("/") or "/"
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount) :]
        return value

    return {name: mapped(value) for name, value in env.items()}


def termination_message(path: Path, *, policy: str, exit_code: int, log: Path) -> str | None:
    """What the kubelet copies into ``state.terminated.message`` (see the module docstring)."""
    data = b""
    with contextlib.suppress(OSError):
        data = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT]
    if not data and policy == "FallbackToLogsOnError" and exit_code != 0:
        with contextlib.suppress(OSError):
            lines = log.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            data = b"\n".join(lines)[-TERMINATION_MESSAGE_LIMIT:]
    return data.decode(errors="replace") if data else None


# --- The kubelet -----------------------------------------------------------------------------------------


class LocalKubelet:
    """Runs the containers of matching Jobs in the stand-in as local processes (see the module docstring).

    Args:
        kubernetes: a started stand-in.
        root: where each pod gets a folder (volumes, termination message, log).
        image: how the containers' image runs locally.
        namespace: the namespace whose Jobs are run.
        label_selector: which Jobs (by default Peerbot's worker Jobs).
        termination_message_env: the variable that tells the process where its termination message goes.
        on_event: called (on the event loop) with every :class:`KubeletEvent`.
    """

    def __init__(
        self,
        kubernetes: KubernetesStandIn,
        *,
        root: Path,
        image: LocalImage,
        namespace: str = "default",
        label_selector: str = WORKER_JOBS,
        termination_message_env: str | None = "PEERBOT_RESULT_FILE",
        on_event: Callable[[KubeletEvent], None] | None = None,
    ) -> None:
        self.kubernetes = kubernetes
        self.root = root
        self.image = image
        self.namespace = namespace
        self.label_selector = label_selector
        self.termination_message_env = termination_message_env
        self.on_event = on_event
        self.runs: list[PodRun] = []
        self.events: list[KubeletEvent] = []
        self._api: client.ApiClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._changed: asyncio.Condition | None = None
        self._watching = asyncio.Event()
        self._failure: BaseException | None = None

    # --- life ------------------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Connect with the real client and start watching Jobs; returns once the first list is done."""
        self.root.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.kubernetes.write_kubeconfig(self.root / "kubelet.kubeconfig", self.namespace)
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig),
            client_configuration=configuration,
            persist_config=False,
            temp_file_path=str(self.root),  # the CA file the client writes stays in our folder
        )
        self._api = client.ApiClient(configuration=configuration)
        self._changed = asyncio.Condition()
        self._watch = asyncio.create_task(self._watch_jobs(), name="kubelet-watch")
        waiting = asyncio.create_task(self._watching.wait())
        await asyncio.wait({self._watch, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self._watch.done():
            self._watch.result()  # raises what stopped the watch
        return self

    async def stop(self) -> None:
        """Stop watching, stop every running container (SIGTERM, then SIGKILL), close the client."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
            self._watch = None
        for process in list(self._processes.values()):
            _signal(process, signal.SIGTERM)
        for task in list(self._tasks):
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
        for process in list(self._processes.values()):
            _signal(process, signal.SIGKILL)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def running(self) -> list[str]:
        """The Jobs whose containers run now."""
        return sorted(self._processes)

    async def wait_for_run(self, job: str, timeout: float = 60.0) -> PodRun:  # noqa: ASYNC109
        """Wait until ``job``'s container has ended; raises TimeoutError saying what was seen."""
        assert self._changed is not None, "start() the kubelet first"

        def finished() -> PodRun | None:
            return next((run for run in self.runs if run.job == job), None)

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: finished() is not None or self._failure is not None)
        except TimeoutError:
            seen = ", ".join(sorted(self._seen)) or "none"
            raise TimeoutError(
                f"the Job {job} did not run to its end within {timeout:g} s (Jobs seen: {seen})"
            ) from None
        if self._failure is not None and finished() is None:
            raise RuntimeError(f"the kubelet stopped watching Jobs: {self._failure}") from self._failure
        run = finished()
        assert run is not None
        return run

    # --- watching ----------------------------------------------------------------------------------------

    async def _watch_jobs(self) -> None:
        assert self._api is not None
        batch = client.BatchV1Api(self._api)
        watch = ListWatch(
            batch.list_namespaced_job,
            self.namespace,
            self.label_selector,
            lambda kind, job: None if kind == "DELETED" else self._consider(job),
            what="Job list or watch",
            listed=self._watching,
        )
        try:
            await watch.run()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._failure = error
            await self._notify()
            raise

    def _consider(self, job: Mapping[str, Any]) -> None:
        metadata = job.get("metadata") or {}
        name = str(metadata.get("name", ""))
        status = job.get("status") or {}
        finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not name or name in self._seen or finished or metadata.get("deletionTimestamp"):
            return
        self._seen.add(name)
        event = KubeletEvent("seen", name)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        task = asyncio.create_task(self._run_job(name, dict(job)), name=f"kubelet:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- running one Job -------------------------------------------------------------------------------

    async def _run_job(self, name: str, job: dict[str, Any]) -> None:
        try:
            pod = await asyncio.to_thread(self.kubernetes.start_job, self.namespace, name)
        except JobPodRejected as error:
            await self._emit(KubeletEvent("rejected", name, message=str(error)))
            return
        pod_name = str(pod["metadata"]["name"])
        spec = pod.get("spec") or {}
        container = (spec.get("containers") or [{}])[0]
        folder = self.root / pod_name
        mounts = {
            str(mount["mountPath"]): folder / "volumes" / str(mount["name"])
            for mount in container.get("volumeMounts") or []
        }
        for path in mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        message_path = str(container.get("terminationMessagePath") or "/dev/termination-log")
        message_file = folder / TERMINATION_FILE
        try:
            env = container_environment(
                container,
                image_env=self.image.env,
                read=self._read,
                hostname=pod_name,
                namespace=self.namespace,
            )
        except ContainerConfigError as error:
            await asyncio.to_thread(self._container_waiting, pod_name, container, str(error))
            await self._emit(KubeletEvent("config-error", name, pod_name, message=str(error)))
            return
        env = map_paths(env, {**mounts, message_path: message_file})
        if self.termination_message_env:
            env[self.termination_message_env] = str(message_file)
        workdir = map_paths({"_": str(container.get("workingDir") or self.image.workdir or "")}, mounts)["_"]
        cwd = Path(workdir) if workdir.startswith(str(folder)) else folder
        cwd.mkdir(parents=True, exist_ok=True)
        command = (
            tuple(container["command"]) + tuple(container.get("args") or [])
            if container.get("command")
            else self.image.entrypoint + tuple(container.get("args") or [])
        )
        log = folder / "log"
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        grace = float(spec.get("terminationGracePeriodSeconds") or DEFAULT_GRACE_SECONDS)
        started = time.monotonic()
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: nothing it starts outlives it
            )
        self._processes[name] = process
        await self._emit(KubeletEvent("started", name, pod_name, pid=process.pid))
        timed_out = False
        try:
            try:
                async with asyncio.timeout(float(deadline) if deadline else None):
                    code = await process.wait()
            except TimeoutError:
                timed_out = True
                _signal(process, signal.SIGTERM)
                try:
                    async with asyncio.timeout(grace):
                        code = await process.wait()
                except TimeoutError:
                    _signal(process, signal.SIGKILL)
                    code = await process.wait()
        finally:
            self._processes.pop(name, None)
            if process.returncode is None:
                _signal(process, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await process.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
        policy = str(container.get("terminationMessagePolicy") or "File")
        document = termination_message(message_file, policy=policy, exit_code=code, log=log)
        run = PodRun(
            job=name,
            pod=pod_name,
            command=command,
            exit_code=code,
            termination_message=document,
            log=log,
            folder=folder,
            seconds=time.monotonic() - started,
            timed_out=timed_out,
        )
        if timed_out:
            await asyncio.to_thread(
                self.kubernetes.time_out_job, self.namespace, name, termination_message=document
            )
        else:
            await asyncio.to_thread(
                self.kubernetes.finish_job,
                self.namespace,
                name,
                succeeded=code == 0,
                termination_message=document,
                exit_code=code,
            )
        self.runs.append(run)
        await self._emit(KubeletEvent("finished", name, pod_name, pid=process.pid, run=run))

    def _read(self, kind: str, name: str) -> Mapping[str, Any] | None:
        return self.kubernetes.get(kind, self.namespace, name)

    def _container_waiting(self, pod: str, container: Mapping[str, Any], message: str) -> None:
        waiting = {"waiting": {"reason": CONFIG_ERROR, "message": message}}
        status = {
            "name": container.get("name"),
            "image": container.get("image"),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": waiting,
        }
        self.kubernetes.patch(
            "pods",
            self.namespace,
            pod,
            {"status": {"phase": "Pending", "containerStatuses": [status]}},
            subresource="status",
        )

    async def _emit(self, event: KubeletEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        await self._notify()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()


def _signal(process: asyncio.subprocess.Process, number: int) -> None:
    """Signal the process's whole group (it was started in its own session)."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, number)


def command_text(command: Sequence[str]) -> str:
    """A command as a person would type it (for messages)."""
    import shlex

    return " ".join(shlex.quote(part) for part in command)
