"""Sessions in a folder on one machine (``peerbot local``, the demo, tests), with GCS's write semantics.

Each object is one plain JSON file (``<root>/<team>/<channel>/<thread_ts>/head.json`` and
``.../steps/*.json``), readable with any editor. Like a GCS object, each file has a **generation**: its
modification time in nanoseconds, which every write sets explicitly to a value strictly greater than the
file's previous one (and at least the current time, so a re-created file never repeats an old
generation). A write is:

1. the bytes go to a temporary file in ``<root>/.tmp`` (flushed to disk first when ``durable``);
2. under an exclusive ``fcntl.flock`` on ``<root>/.lock``, the current file's generation is compared with
   the precondition, the temporary file gets its new generation as modification time, and
   ``os.replace`` moves it into place atomically.

Readers take no lock: a file is only ever replaced whole, never changed in place, and the bytes and the
generation are read from the same open file. The lock works between processes and between threads (each
write opens the lock file anew). It needs a local filesystem with nanosecond timestamps (ext4, xfs, btrfs,
tmpfs, APFS); a write refuses to continue where timestamps are too coarse to order generations.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Final

from peerbot.session.format import SessionError
from peerbot.session.store import ObjectBackend, PreconditionFailedError, SessionStore, StoredObject

LOCK_FILE: Final = ".lock"
TEMP_FOLDER: Final = ".tmp"


class LocalObjects(ObjectBackend):
    """Objects as files under ``root``, with generations and conditional writes (see the module text)."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root.resolve()
        self.durable = durable
        (self.root / TEMP_FOLDER).mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / LOCK_FILE

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise ValueError(f"object name {name!r} is not a plain relative path")
        return self.root.joinpath(*parts)

    def location(self, name: str) -> str:
        return str(self._path(name))

    def read(self, name: str) -> StoredObject | None:
        try:
            with self._path(name).open("rb") as file:
                generation = os.fstat(file.fileno()).st_mtime_ns
                return StoredObject(data=file.read(), generation=generation)
        except FileNotFoundError:
            return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        path = self._path(name)
        temp = self.root / TEMP_FOLDER / f"{path.name}.{secrets.token_hex(8)}"
        try:
            with temp.open("wb") as file:
                file.write(data)
                if self.durable:
                    file.flush()
                    os.fsync(file.fileno())
            with self._locked():
                try:
                    current = path.stat().st_mtime_ns
                except FileNotFoundError:
                    current = 0
                if current != if_generation_match:
                    raise PreconditionFailedError(
                        f"{path} is at generation {current}, not {if_generation_match}"
                    )
                wanted = max(current + 1, time.time_ns())
                os.utime(temp, ns=(wanted, wanted))
                generation = temp.stat().st_mtime_ns
                if generation <= current:
                    raise SessionError(
                        f"the filesystem under {self.root} keeps timestamps too coarsely to order writes "
                        f"(set {wanted}, read back {generation}): put SESSION_DIR on ext4, xfs, btrfs "
                        "or tmpfs"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, path)
                if self.durable:
                    _fsync_folder(path.parent)
                return generation
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._locked():
            path.unlink(missing_ok=True)
            # Prune folders left empty, so deleted threads leave nothing behind (under the lock, so a
            # writer never finds its folder removed between making it and moving its file in).
            folder = path.parent
            while folder != self.root:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    def list_names(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        names: list[str] = []
        for directory, _, files in os.walk(folder):
            relative = Path(directory).relative_to(self.root).as_posix()
            names.extend(f"{relative}/{file}" for file in files)
        return sorted(names)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSessionStore(SessionStore):
    """A :class:`SessionStore` in the folder ``root`` (``SESSION_DIR``), for one machine.

    Args:
        root: the folder; created if missing.
        prefix: object-name prefix inside it (none by default: ``<root>/<team>/<channel>/<thread_ts>/``).
        durable: flush every write to disk before it counts (off only for throw-away folders in tests).
        clock: the time source for timestamps in the session (tests pin it).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        prefix: str = "",
        durable: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(LocalObjects(Path(root), durable=durable), prefix=prefix, clock=clock)
