"""Run the strict Kubernetes emulator on localhost for tests, the offline demo and benchmarks.

:class:`KubernetesStandIn` serves :class:`~.emulator.StrictKubernetesEmulator` with aiohttp on its own event
loop in a background thread, so synchronous clients (``kubernetes``, ``kubectl``) and other event loops
(kopf's, a test's) can all use it at once. Tests read and drive the state through thread-safe helpers::

    with KubernetesStandIn(crds=[CRD_PATH]) as k8s:
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig")
        ...  # run the operator; create a Conversation
        job = k8s.wait_for("jobs", "default", "conv-1-t1", lambda job: job is not None)
        k8s.finish_job("default", "conv-1-t1", termination_message='{"answeredTs": "1.2"}')
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import json
import pathlib
import secrets
import shutil
import ssl
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import aiohttp.web
import yaml

from peerbot.testing.kubernetes import controllers, patches, tls
from peerbot.testing.kubernetes.emulator import IMMORTAL_NAMESPACES, WATCH_HISTORY, StrictKubernetesEmulator

if TYPE_CHECKING:
    import kopf

T = TypeVar("T")

#: Starting the server takes milliseconds; this only bounds a broken start.
START_TIMEOUT_SECONDS: Final = 10.0
#: Stopping closes every watch first, so handlers end at once; this bounds a stuck shutdown.
STOP_TIMEOUT_SECONDS: Final = 10.0
#: A helper call runs one short synchronous operation on the server's loop.
CALL_TIMEOUT_SECONDS: Final = 10.0
#: Requests still running at shutdown get this long before aiohttp cancels them.
SHUTDOWN_GRACE_SECONDS: Final = 0.5
#: Bytes of randomness in the generated bearer token.
TOKEN_BYTES: Final = 24
#: The default for waits: generous for slow CI machines, short enough to fail a test quickly.
DEFAULT_WAIT_SECONDS: Final = 10.0

ObjectCondition = Callable[[dict[str, Any] | None], Any]


class KubernetesStandIn:
    """A local, strict Kubernetes API server (see :mod:`.emulator` for what it does and does not do)."""

    def __init__(
        self,
        *,
        namespaces: Iterable[str] = ("default",),
        crds: Iterable[str | pathlib.Path | Mapping[str, Any]] = (),
        token: str | None = None,
        garbage_collector: bool = False,
        watch_history: int = WATCH_HISTORY,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure (not start) the server.

        Args:
            namespaces: namespaces to create at start (``default``, ``kube-system`` and ``kube-public`` always
                exist, as in every cluster).
            crds: CustomResourceDefinitions to install at start (file paths or manifests).
            token: the bearer token clients must present; a random one by default.
            garbage_collector: run the garbage collector after every change (otherwise only when
                :meth:`collect_garbage` is called, so tests see exactly what their code deleted).
            watch_history: how many changes watches can resume from; older resourceVersions get 410 Gone.
            host: the address to listen on (keep it local).
            port: the port, 0 for any free one.
        """
        self._namespaces = [*IMMORTAL_NAMESPACES, *(ns for ns in namespaces if ns not in IMMORTAL_NAMESPACES)]
        self._crds = list(crds)
        self.token: str = token or secrets.token_urlsafe(TOKEN_BYTES)
        self._garbage_collector = garbage_collector
        self._watch_history = watch_history
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._emulator: StrictKubernetesEmulator | None = None
        self._url: str | None = None
        self._certificates = tls.make_certificates()
        self._files: pathlib.Path | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # --- lifecycle

    def start(self) -> Self:
        """Start serving (returns once the server accepts requests and the bootstrap objects exist)."""
        if self._thread is not None:
            raise RuntimeError("The Kubernetes stand-in is already started; create a new one to start again.")
        self._files = pathlib.Path(tempfile.mkdtemp(prefix="peerbot-k8s-standin-"))
        (self._files / "ca.crt").write_bytes(self._certificates.ca_pem)
        self._thread = threading.Thread(target=self._thread_main, name="kubernetes-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS):
            raise TimeoutError(f"The Kubernetes stand-in did not start within {START_TIMEOUT_SECONDS} s")
        if self._startup_error is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            self._remove_files()
            raise RuntimeError(
                f"The Kubernetes stand-in failed to start: {self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self) -> None:
        """Close all watches and connections, stop the server and its thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._remove_files()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT_SECONDS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_SECONDS)
            self._remove_files()
        if thread.is_alive():
            raise RuntimeError(
                f"The Kubernetes stand-in's thread did not stop within {STOP_TIMEOUT_SECONDS} s"
            )

    def _remove_files(self) -> None:
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
            self._files = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as e:  # reported to start(), which raises it in the caller's thread
            self._startup_error = e
            loop.run_until_complete(self._shutdown())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        emulator = StrictKubernetesEmulator(
            token=self.token, garbage_collector=self._garbage_collector, watch_history=self._watch_history
        )
        self._emulator = emulator
        await emulator.__aenter__()
        server = aiohttp.web.Server(emulator, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(
            self._runner, self._host, self._port, ssl_context=self._server_ssl_context()
        )
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"https://{host}:{port}"
        namespaces = emulator.registry.find("namespaces")
        for namespace in self._namespaces:
            emulator.create_object(namespaces, None, {"metadata": {"name": namespace}}, {})
        for crd in self._crds:
            self._install_crd(crd)

    def _server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        assert self._files is not None  # start() made it before starting this thread
        cert_path, key_path = self._files / "server.crt", self._files / "server.key"
        cert_path.write_bytes(self._certificates.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self._certificates.key_pem)
        context.load_cert_chain(cert_path, key_path)
        key_path.unlink()
        return context

    async def _shutdown(self) -> None:
        if self._emulator is not None:
            self._emulator.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._emulator is not None and self._emulator.active:
            await self._emulator.__aexit__(None, None, None)

    # --- connection details

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._url is None:
            raise RuntimeError(
                "The Kubernetes stand-in is not started: call start() or use it as a context manager."
            )
        return self._url

    @property
    def ca_path(self) -> pathlib.Path:
        """The CA certificate file that verifies the server (for clients that want a path; while running)."""
        if self._files is None:
            raise RuntimeError("The Kubernetes stand-in is not started.")
        return self._files / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        """The PEM of the CA that signed the server's certificate (clients must trust it)."""
        return self._certificates.ca_pem

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts the stand-in (for aiohttp or httpx clients)."""
        return ssl.create_default_context(cadata=self._certificates.ca_pem.decode())

    @property
    def emulator(self) -> StrictKubernetesEmulator:
        """The kmock handler: add scripted reactions (``emulator['patch'] << 500``) or assert on requests.

        Its state belongs to the server's thread; read objects through this class's helpers instead.
        """
        if self._emulator is None:
            raise RuntimeError("The Kubernetes stand-in is not started.")
        return self._emulator

    def write_kubeconfig(self, path: str | pathlib.Path, namespace: str = "default") -> pathlib.Path:
        """Write a kubeconfig for kubectl and the client libraries (context ``standin``)."""
        target = pathlib.Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "standin",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self._certificates.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "standin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
            "preferences": {},
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        target.chmod(0o600)
        return target

    def kopf_connection_info(self, namespace: str = "default") -> kopf.ConnectionInfo:
        """Credentials for kopf: return this from an ``@kopf.on.login()`` handler."""
        import kopf  # only callers that run kopf need it

        return kopf.ConnectionInfo(
            server=self.url,
            ca_data=self._certificates.ca_pem,
            token=self.token,
            scheme="Bearer",
            default_namespace=namespace,
        )

    # --- calling into the server's thread ------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        loop = self._loop
        if loop is None or self._emulator is None or not loop.is_running():
            raise RuntimeError("The Kubernetes stand-in is not running.")
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    # --- administration ------------------------------------------------------------------------------------

    def _install_crd(self, crd: str | pathlib.Path | Mapping[str, Any]) -> list[dict[str, Any]]:
        emulator = self.emulator
        if isinstance(crd, Mapping):
            documents = [dict(crd)]
        else:
            documents = [
                doc for doc in yaml.safe_load_all(pathlib.Path(crd).read_text(encoding="utf-8")) if doc
            ]
        resource = emulator.registry.find("customresourcedefinitions")
        installed = []
        for document in documents:
            name = (document.get("metadata") or {}).get("name", "")
            existing = emulator.stored(resource, None, name)
            if existing is None:
                obj, _ = emulator.create_object(resource, None, document, {})
            else:
                body = copy.deepcopy(document)
                body.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
                obj, _ = emulator.replace_object(resource, None, name, body, {})
            installed.append(obj)
        return installed

    def deny(self, verb: str, resource: str, *, group: str = "", subresource: str | None = None) -> None:
        """RBAC: refuse ``verb`` on ``resource`` from now on (403 Forbidden, and SelfSubjectAccessReviews
        answer ``allowed: false``), as a Role without that rule would."""
        name = f"{resource}/{subresource}" if subresource else resource
        self._call(lambda: self.emulator.denied.add((verb, group, name)))

    def allow_all(self) -> None:
        """RBAC: take back every :meth:`deny`."""
        self._call(self.emulator.denied.clear)

    def install_crd(self, crd: str | pathlib.Path | Mapping[str, Any]) -> list[dict[str, Any]]:
        """Create (or update) the CRDs in a YAML file or manifest; their resources are served at once."""
        return self._call(lambda: self._install_crd(crd))

    def create_namespace(self, name: str) -> dict[str, Any]:
        """Create a namespace (with its ``default`` ServiceAccount, as the cluster's controllers would)."""
        emulator = self.emulator
        return self._call(
            lambda: emulator.create_object(
                emulator.registry.find("namespaces"), None, {"metadata": {"name": name}}, {}
            )[0]
        )

    # --- thread-safe reads ---------------------------------------------------------------------------------

    def objects(
        self, resource: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Current objects of a resource (``conversations``, ``conv``, ``batch/v1/jobs``...), with kind."""
        emulator = self.emulator

        def read() -> list[dict[str, Any]]:
            kind = emulator.registry.find(resource)
            listing = emulator.list_objects(kind, namespace, {"labelSelector": label_selector or ""})
            return [dict(item, apiVersion=kind.api_version, kind=kind.kind) for item in listing["items"]]

        return self._call(read)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object as the API serves it, or None."""
        emulator = self.emulator

        def read() -> dict[str, Any] | None:
            kind = emulator.registry.find(resource)
            stored = emulator.stored(kind, namespace, name)
            return None if stored is None else kind.behaviour.to_served(kind, stored)

        return self._call(read)

    def events(
        self, namespace: str | None = None, *, involved_name: str | None = None
    ) -> list[dict[str, Any]]:
        """core/v1 Events, optionally only those about one object (by name)."""
        events = self.objects("v1/events", namespace)
        if involved_name is None:
            return events
        return [event for event in events if (event.get("involvedObject") or {}).get("name") == involved_name]

    def wait_for(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        condition: ObjectCondition,
        timeout: float = DEFAULT_WAIT_SECONDS,
    ) -> Any:
        """Block until ``condition(object or None)`` is truthy, re-checked on every change; return its value.

        Raises TimeoutError with the object's last state if the condition does not hold in time.
        """
        future = self._submit_wait(resource, namespace, name, condition, timeout)
        return future.result(timeout + CALL_TIMEOUT_SECONDS)

    async def await_for(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        condition: ObjectCondition,
        timeout: float = DEFAULT_WAIT_SECONDS,  # noqa: ASYNC109 - enforced on the server's loop, as in wait_for()
    ) -> Any:
        """:meth:`wait_for` for async code (does not block the caller's event loop)."""
        return await asyncio.wrap_future(self._submit_wait(resource, namespace, name, condition, timeout))

    def _submit_wait(
        self, resource: str, namespace: str | None, name: str, condition: ObjectCondition, timeout: float
    ) -> concurrent.futures.Future[Any]:
        emulator = self.emulator
        loop = self._loop
        if loop is None:
            raise RuntimeError("The Kubernetes stand-in is not running.")
        kind = emulator.registry.find(resource)

        def current() -> dict[str, Any] | None:
            stored = emulator.stored(kind, namespace, name)
            return None if stored is None else kind.behaviour.to_served(kind, stored)

        async def wait() -> Any:
            try:
                async with asyncio.timeout(timeout):
                    return await emulator.wait_until(lambda: condition(current()))
            except TimeoutError:
                state = json.dumps(current(), indent=1, sort_keys=True)
                where = f"{namespace}/{name}" if namespace else name
                raise TimeoutError(
                    f"{kind.plural} {where} did not reach the expected state within {timeout} s; last "
                    f"state: {state}"
                ) from None

        return asyncio.run_coroutine_threadsafe(wait(), loop)

    def wait_for_watch(
        self, resource: str, namespace: str | None = None, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> None:
        """Block until some client (an operator) watches ``resource``: its handlers will now see changes."""
        emulator = self.emulator
        loop = self._loop
        if loop is None:
            raise RuntimeError("The Kubernetes stand-in is not running.")
        kind = emulator.registry.find(resource)

        async def wait() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await emulator.wait_until(lambda: emulator.watching(kind, namespace))
            except TimeoutError:
                where = f" in namespace {namespace}" if namespace else ""
                raise TimeoutError(
                    f"Nothing started watching {kind.plural}{where} within {timeout} s"
                ) from None

        asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout + CALL_TIMEOUT_SECONDS)

    # --- writes through the API machinery (as a controller or a user would) ---------------------------------

    def create(self, resource: str, body: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object with the API's full validation (raises :class:`~.errors.ApiError`)."""
        emulator = self.emulator

        def write() -> dict[str, Any]:
            kind = emulator.registry.find(resource)
            where = namespace or (body.get("metadata") or {}).get("namespace") if kind.namespaced else None
            served = dict(
                body,
                apiVersion=body.get("apiVersion") or kind.api_version,
                kind=body.get("kind") or kind.kind,
            )
            return emulator.create_object(kind, where, served, {})[0]

        return self._call(write)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        patch_type: str = patches.MERGE_PATCH,
    ) -> dict[str, Any]:
        """Patch an object (merge patch by default; ``subresource="status"`` for status)."""
        emulator = self.emulator

        def write() -> dict[str, Any]:
            kind = emulator.registry.find(resource)
            body = json.dumps(patch).encode()
            return emulator.patch_object(kind, namespace, name, body, patch_type, {}, subresource)[0]

        return self._call(write)

    def delete(
        self, resource: str, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> dict[str, Any]:
        """Delete an object as a client would (finalizers are honoured)."""
        emulator = self.emulator

        def write() -> dict[str, Any]:
            kind = emulator.registry.find(resource)
            params = {"propagationPolicy": propagation_policy} if propagation_policy else {}
            return emulator.delete_object(kind, namespace, name, params, None)[0]

        return self._call(write)

    # --- playing the controllers and the kubelet ------------------------------------------------------------

    def start_job(self, namespace: str, name: str) -> dict[str, Any]:
        """The Job controller creates the Job's pod and the kubelet runs it; returns the Running pod."""
        emulator = self.emulator
        return self._call(lambda: controllers.start_job(emulator, namespace, name))

    def finish_job(
        self,
        namespace: str,
        name: str,
        *,
        succeeded: bool = True,
        termination_message: str | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """The Job's pod exits (with the worker's termination message) and the Job completes or fails."""
        emulator = self.emulator
        return self._call(
            lambda: controllers.finish_job(
                emulator,
                namespace,
                name,
                succeeded=succeeded,
                termination_message=termination_message,
                exit_code=exit_code,
                reason=reason,
            )
        )

    def time_out_job(
        self, namespace: str, name: str, *, termination_message: str | None = None
    ) -> dict[str, Any]:
        """The Job's ``activeDeadlineSeconds`` passes: its pod is stopped and deleted, the Job fails."""
        emulator = self.emulator
        return self._call(
            lambda: controllers.time_out_job(
                emulator, namespace, name, termination_message=termination_message
            )
        )

    def job_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The pods a Job owns."""
        emulator = self.emulator
        return self._call(lambda: controllers.job_pods(emulator, namespace, name))

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """Run the garbage collector once: delete dependents whose owners are gone (cascading delete)."""
        emulator = self.emulator
        return self._call(emulator.collect_garbage)

    def internal_errors(self) -> list[BaseException]:
        """Unexpected failures while serving (a test should expect none)."""
        emulator = self.emulator
        return self._call(lambda: list(emulator.internal_errors))
