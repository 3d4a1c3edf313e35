"""Conversations as JSON files in a folder: what the Kubernetes API server is for ``peerbot local``.

One file per thread, ``<folder>/<conversation name>.json``, holding the whole object exactly as the API
server would (``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``), so the planner, the dispatcher
and a person with an editor all read the same thing. The semantics are the API server's:

- **Create is idempotent by name**: creating a name that exists raises :class:`AlreadyExistsError` (409),
  never a second Conversation.
- **Versions**: ``metadata.resourceVersion`` is a counter that every write increments, and
  ``metadata.generation`` counts changes of ``spec``. A write may name the version it read
  (``expected_version``) and is refused with :class:`ConflictError` when someone wrote in between.
- **Patches**: JSON patches (RFC 6902, with ``test``: a failed test raises :class:`PatchTestFailedError`,
  as the API server answers 422) and merge patches (RFC 7386) for ``status``. The dispatcher's own patch
  builders (:mod:`peerbot.dispatcher.store`) are applied unchanged, so ``requestedTs`` only moves forward
  for exactly the same reasons as in a cluster.
- **Locking**: a read-modify-write holds an exclusive ``flock`` on the Conversation's own lock file
  (``.locks/<name>.lock``), between threads and processes alike. Deleting a Conversation removes its
  lock file while holding it; a writer that was waiting on the removed file notices (the inode changed)
  and locks the new one.
- **Crash safety**: the new content goes to a temporary file in ``.tmp/`` (flushed to disk when
  ``durable``), then ``os.replace`` moves it into place: a reader sees the old file or the new one,
  never half of either, and a crash leaves at most a stray temporary file.

:class:`ConversationFiles` is the synchronous core (used by the local runner from a worker thread);
:class:`FileConversationStore` puts the dispatcher's async interface
(:class:`~peerbot.dispatcher.store.ConversationBackend`) on top of it.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import ValidationError

from peerbot.conversation import Conversation
from peerbot.dispatcher.store import (
    MAX_CONFLICT_RETRIES,
    Recorded,
    RequestRecord,
    StoreError,
    WriteOutcome,
    cancel_patch,
    follow_up_patch,
    new_conversation,
    status_message_patch,
)
from peerbot.naming import is_dns_label

LOCK_FOLDER: Final = ".locks"
TEMP_FOLDER: Final = ".tmp"
SUFFIX: Final = ".json"

PatchKind = Literal["json", "merge"]


class NotFoundError(StoreError):
    """There is no Conversation of that name (the API server's 404)."""

    def __init__(self, name: str) -> None:
        super().__init__("local_not_found", f"there is no Conversation {name} (it was deleted meanwhile)")


class AlreadyExistsError(StoreError):
    """A Conversation of that name exists already (the API server's 409 on create)."""

    def __init__(self, name: str) -> None:
        super().__init__("local_exists", f"the Conversation {name} exists already")


class ConflictError(StoreError):
    """Someone wrote the Conversation after the version the writer read (the API server's 409)."""

    def __init__(self, name: str, expected: str, found: str) -> None:
        super().__init__(
            "local_conflict",
            f"the Conversation {name} changed while it was being written (read version {expected}, "
            f"now {found}): read it again",
        )


class PatchTestFailedError(StoreError):
    """A JSON patch's ``test`` operation did not hold (the API server's 422)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__("local_test_failed", f"the Conversation {name} no longer holds the value at {path}")


class InvalidRecordError(StoreError):
    """A write would leave a Conversation the schema refuses (the API server's 422), or a patch is bad."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__("local_invalid", f"the record of Conversation {name} was refused: {why}")


class DamagedRecordError(StoreError):
    """A Conversation file is not a JSON object (edited by hand, or not written by Peerbot)."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            "local_damaged",
            f"{path} is damaged ({why}): fix it with an editor or delete it (the thread's session is kept "
            "in the sessions folder; the next message in the thread creates the file again)",
        )


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- Patches ------------------------------------------------------------------------------------------------


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _parent(document: dict[str, Any], path: str, name: str) -> tuple[dict[str, Any], str]:
    """The object holding the member ``path`` points at, and the member's key (objects only)."""
    if not path.startswith("/"):
        raise InvalidRecordError(name, f"a JSON patch path must start with '/': {path!r}")
    *parents, last = [_unescape(segment) for segment in path[1:].split("/")]
    node: Any = document
    for segment in parents:
        if not isinstance(node, dict) or segment not in node:
            raise InvalidRecordError(name, f"the patch path {path} does not exist")
        node = node[segment]
    if not isinstance(node, dict):
        raise InvalidRecordError(name, f"the patch path {path} is not inside an object")
    return node, last


def apply_json_patch(document: dict[str, Any], ops: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """RFC 6902 on objects (``test``, ``add``, ``replace``, ``remove``); all or nothing."""
    result = copy.deepcopy(document)
    for op in ops:
        kind = op.get("op")
        path = str(op.get("path", ""))
        parent, key = _parent(result, path, name)
        if kind == "test":
            if key not in parent or parent[key] != op.get("value"):
                raise PatchTestFailedError(name, path)
        elif kind == "add":
            parent[key] = copy.deepcopy(op.get("value"))
        elif kind == "replace":
            if key not in parent:
                raise InvalidRecordError(name, f"cannot replace {path}: it does not exist")
            parent[key] = copy.deepcopy(op.get("value"))
        elif kind == "remove":
            if key not in parent:
                raise InvalidRecordError(name, f"cannot remove {path}: it does not exist")
            del parent[key]
        else:
            raise InvalidRecordError(name, f"unsupported JSON patch operation {kind!r}")
    return result


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge member by member, ``null`` removes a member, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# --- The folder ---------------------------------------------------------------------------------------------


class ConversationFiles:
    """Conversations in ``folder`` (see the module docstring). Thread- and process-safe; blocking."""

    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        self.folder = folder
        self.durable = durable
        (folder / LOCK_FOLDER).mkdir(parents=True, exist_ok=True)
        (folder / TEMP_FOLDER).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The file of Conversation ``name``; names are DNS labels, so never a path outside the folder."""
        if not is_dns_label(name):
            raise InvalidRecordError(name, "a Conversation name is a DNS label (a-z, 0-9, '-')")
        return self.folder / f"{name}{SUFFIX}"

    def names(self) -> list[str]:
        """Every Conversation's name, sorted."""
        return sorted(path.stem for path in self.folder.glob(f"*{SUFFIX}") if is_dns_label(path.stem))

    def get(self, name: str) -> dict[str, Any] | None:
        """The Conversation as stored, or ``None``. Takes no lock: files are only ever replaced whole."""
        path = self.path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(raw)
        except ValueError as error:
            raise DamagedRecordError(path, f"not JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("metadata"), dict):
            raise DamagedRecordError(path, "not a Conversation object")
        return document

    def create(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new Conversation; :class:`AlreadyExistsError` when the name is taken."""
        name = str((document.get("metadata") or {}).get("name") or "")
        with self._locked(name):
            if self.path(name).exists():
                raise AlreadyExistsError(name)
            created = copy.deepcopy(dict(document))
            metadata = created.setdefault("metadata", {})
            metadata.update(
                {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": _now(),
                    "generation": 1,
                    "resourceVersion": "1",
                }
            )
            created.setdefault("status", {})
            self._validate(name, created)
            self._write(name, created)
            return created

    def modify(
        self,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        expected_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Read, change and write one Conversation under its lock; returns what is stored afterwards.

        ``change`` gets a copy of the stored object and returns the new one, or ``None`` to write
        nothing. Raises :class:`NotFoundError`, :class:`ConflictError` (``expected_version`` is not the
        stored one), or whatever ``change`` raises.
        """
        with self._locked(name):
            current = self.get(name)
            if current is None:
                raise NotFoundError(name)
            version = str(current["metadata"].get("resourceVersion", "0"))
            if expected_version is not None and expected_version != version:
                raise ConflictError(name, expected_version, version)
            changed = change(copy.deepcopy(current))
            if changed is None or changed == current:
                return current
            metadata = changed.setdefault("metadata", {})
            for fixed in ("name", "uid", "creationTimestamp"):
                if fixed in current["metadata"]:
                    metadata[fixed] = current["metadata"][fixed]
            metadata["resourceVersion"] = str(int(version) + 1)
            generation = int(current["metadata"].get("generation", 1))
            metadata["generation"] = (
                generation + 1 if changed.get("spec") != current.get("spec") else generation
            )
            self._validate(name, changed)
            self._write(name, changed)
            return changed

    def patch(
        self,
        name: str,
        body: Any,
        *,
        kind: PatchKind,
        expected_version: str | None = None,
    ) -> dict[str, Any]:
        """Apply a JSON patch (a list of operations) or a merge patch (an object) to the whole object."""

        def change(current: dict[str, Any]) -> dict[str, Any]:
            if kind == "json":
                return apply_json_patch(current, list(body), name)
            merged: dict[str, Any] = apply_merge_patch(current, body)
            return merged

        stored = self.modify(name, change, expected_version=expected_version)
        assert stored is not None
        return stored

    def patch_status(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into ``status`` (the operator's status subresource write)."""
        return self.patch(name, {"status": dict(patch)}, kind="merge")

    def delete(self, name: str) -> bool:
        """Remove the Conversation (and its lock file); ``False`` when there was none."""
        path = self.path(name)
        with self._locked(name):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            finally:
                # Removed while held: a writer waiting on this lock file sees its inode vanish and retries.
                with suppress(FileNotFoundError):
                    self._lock_path(name).unlink()
            if self.durable:
                _fsync_folder(self.folder)
            return True

    # --- pieces ---------------------------------------------------------------------------------------

    def _lock_path(self, name: str) -> Path:
        self.path(name)  # validates the name
        return self.folder / LOCK_FOLDER / f"{name}.lock"

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        path = self._lock_path(name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)  # the lock file was deleted (with its Conversation) while we waited: lock anew
        try:
            yield
        finally:
            os.close(fd)

    def _validate(self, name: str, document: dict[str, Any]) -> None:
        try:
            Conversation.model_validate(document)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_input=False)
            )
            raise InvalidRecordError(name, problems) from None

    def _write(self, name: str, document: dict[str, Any]) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        temporary = self.folder / TEMP_FOLDER / f"{name}.{secrets.token_hex(6)}{SUFFIX}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                if self.durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, self.path(name))
        except BaseException:
            with suppress(FileNotFoundError):
                temporary.unlink()
            raise
        if self.durable:
            _fsync_folder(self.folder)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the directory entry itself is flushed)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- The dispatcher's interface -----------------------------------------------------------------------------


class FileConversationStore:
    """The dispatcher's Conversation store (:class:`~peerbot.dispatcher.store.ConversationBackend`) on files.

    Every call runs in a worker thread (a write flushes to disk; the event loop must stay free to
    acknowledge Slack within its three seconds). ``on_change`` is called with the name after every
    write, so the local runner plans at once instead of at its next timer.
    """

    #: Where the dispatcher says it writes (it logs this at start); a folder has no namespace.
    namespace: Final = "local"

    def __init__(self, files: ConversationFiles, on_change: Callable[[str], None] | None = None) -> None:
        self.files = files
        self.on_change = on_change

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except StoreError:
            raise
        except OSError as error:
            raise StoreError(
                "local_unavailable",
                f"the Conversations folder {self.files.folder} cannot be used ({error.strerror or error}): "
                "check that it exists, is writable and that the disk is not full",
            ) from error

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)

    async def get(self, name: str) -> dict[str, Any] | None:
        """The Conversation, or ``None`` when there is none."""
        found: dict[str, Any] | None = await self._call(self.files.get, name)
        return found

    async def ping(self) -> None:
        """Raise unless the folder can be read and written."""

        def check() -> None:
            folder = self.files.folder
            if not folder.is_dir() or not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(13, "not a readable and writable folder", str(folder))

        await self._call(check)

    async def record(self, request: RequestRecord, known: Mapping[str, Any] | None = None) -> Recorded:
        """Create the thread's Conversation, or move its ``requestedTs`` forward (see the dispatcher's store).

        The same steps as against the API server: create (unless ``known`` says it exists), else apply
        :func:`~peerbot.dispatcher.store.follow_up_patch`, whose ``test`` refuses a writer that read a value
        someone has moved since; that writer reads again and finds nothing newer to record.
        """
        recorded: Recorded = await self._call(self._record, request, known)
        if recorded.won:
            self._changed(request.name)
        return recorded

    def _record(self, request: RequestRecord, known: Mapping[str, Any] | None) -> Recorded:
        current: Mapping[str, Any] | None = known
        create = known is None
        for _ in range(MAX_CONFLICT_RETRIES):
            if create:
                try:
                    return Recorded(WriteOutcome.CREATED, self.files.create(new_conversation(request)))
                except AlreadyExistsError:
                    pass
            if current is None:
                current = self.files.get(request.name)
            create = current is None  # deleted since (retention): start afresh
            if current is None:
                continue
            ops = follow_up_patch(current, request)
            if ops is None:
                return Recorded(WriteOutcome.UNCHANGED, dict(current))
            try:
                return Recorded(WriteOutcome.UPDATED, self.files.patch(request.name, ops, kind="json"))
            except (NotFoundError, PatchTestFailedError):
                current = None
        raise StoreError("local_conflict", "the thread's record kept changing while I was writing to it")

    async def set_status_message(self, name: str, requested_ts: str, message_ts: str) -> bool:
        """Point the Conversation at its status message; ``False`` when a newer request was recorded."""
        patch = status_message_patch(requested_ts, message_ts)
        try:
            await self._call(lambda: self.files.patch(name, patch, kind="json"))
        except (NotFoundError, PatchTestFailedError):
            return False
        self._changed(name)
        return True

    async def request_cancel(self, name: str, at: datetime) -> dict[str, Any]:
        """Set ``spec.cancelRequestedAt`` (RFC 3339, UTC)."""
        updated: dict[str, Any] = await self._call(
            lambda: self.files.patch(name, cancel_patch(at), kind="merge")
        )
        self._changed(name)
        return updated
