"""Where sessions live: :class:`SessionStore`, one algorithm over a small object-storage interface.

Layout, for the thread ``T/C/ts`` under the store's prefix (``sessions`` by default)::

    sessions/T/C/ts/head.json                     the manifest, overwritten under a generation precondition
    sessions/T/C/ts/steps/<first>-<count>-<id>.json   immutable step segments, created once, never rewritten

Why this shape:

- **Checkpoints cost what the step costs.** Appending a step creates one segment holding just that step
  and rewrites the head, which holds only scalars and a short segment list. The history is never
  rewritten per step.
- **Restores stay fast.** Segments are consolidated like a log-structured merge tree: whenever the newest
  :data:`MERGE_FANOUT` segments are at the same level, they are merged into one segment a level up. A
  session of ``n`` steps has at most ``(MERGE_FANOUT - 1) * log(n, MERGE_FANOUT)`` segments, and each step
  is rewritten about ``log(n, MERGE_FANOUT)`` times over its life (a merge is the one checkpoint that writes
  more than its step). Compaction (:meth:`SessionStore.replace`) starts over from a single segment.
- **Two writers can never silently overwrite each other.** The head is the single commit point: it is
  written with ``if_generation_match`` set to the generation the writer loaded (``0``: must not exist yet),
  so of two racing writers exactly one wins and the other gets :class:`StaleSessionError`. Generations are
  never reused (GCS: timestamps; local folder: strictly increasing nanoseconds), so there is no ABA.
- **A crash corrupts nothing.** Segments get unique names and are written *before* the head that names
  them; a writer killed in between leaves an orphan that no head refers to, which loads ignore and
  compaction or :meth:`SessionStore.delete` removes. Segments a new head no longer names are deleted only
  after that head is written; a load that meets one vanishing under it re-reads the head.

The stores built on it: :class:`peerbot.session.gcs.GcsSessionStore` (Google Cloud Storage) and
:class:`peerbot.session.local.LocalSessionStore` (a folder on one machine). :class:`AsyncSessionStore`
wraps either for asyncio code.

On real GCS, one object name takes about one write a second; faster head writes of the *same thread* get
429 and the client retries them with backoff. A worker that checkpoints a model step and its tool results
within the same second should therefore checkpoint from a background task and pass the steps that queued
up meanwhile to one :meth:`SessionStore.append`.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from peerbot.logs import get_logger
from peerbot.session.format import (
    CompactionSummary,
    Segment,
    SegmentRef,
    Session,
    SessionChanges,
    SessionCorruptError,
    SessionError,
    SessionHead,
    SessionKey,
    Step,
    TokenUsage,
    decode,
    encode,
    orphan_tool_results,
    total_usage,
)

log = get_logger(__name__)

#: How many same-level segments are merged into one. 8 keeps a 300-step session (about 100k tokens) in
#: at most 20 or so objects while rewriting each step only ~3 times in its life.
MERGE_FANOUT: Final = 8
#: A load that finds a segment gone re-reads the head this many times (a concurrent compaction or merge
#: deleted what the head it read named) before calling the session corrupt.
LOAD_ATTEMPTS: Final = 3
#: Segments are immutable, so a cache of them is always correct; this bounds its memory.
SEGMENT_CACHE_BYTES: Final = 64 * 1024 * 1024
#: Heads cached per store (one per thread recently written), so a checkpoint needs no read first.
HEAD_CACHE_ENTRIES: Final = 256
#: Random hex characters in a segment name: 48 bits, so two writers never pick the same name.
SEGMENT_ID_CHARS: Final = 12
HEAD_OBJECT: Final = "head.json"
STEPS_FOLDER: Final = "steps"
DEFAULT_PREFIX: Final = "sessions"


# --- Errors ---------------------------------------------------------------------------------------------


class StaleSessionError(SessionError):
    """The session changed since it was loaded (or was created or deleted meanwhile); nothing was written.

    Attributes:
        key: the thread.
        expected_generation: what the writer loaded (0: it expected no session).
        actual_generation: what is stored now (0: no session), when known.
    """

    def __init__(self, key: SessionKey, expected_generation: int, actual_generation: int | None) -> None:
        self.key = key
        self.expected_generation = expected_generation
        self.actual_generation = actual_generation
        if expected_generation == 0:
            what = "already exists"
        elif actual_generation == 0:
            what = "was deleted"
        else:
            found = "" if actual_generation is None else f", found {actual_generation}"
            what = f"changed since it was loaded (expected generation {expected_generation}{found})"
        super().__init__(
            f"session {key} {what}: another writer got there first and nothing was written. Load the session "
            "again and redo the step on top of it, or stop if another worker owns this thread."
        )


# --- The object-storage interface -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes and the generation they belong to (read together, never from two versions)."""

    data: bytes
    generation: int


class PreconditionFailedError(Exception):
    """A conditional write found another generation than the one it asked for."""


class ObjectBackend(ABC):
    """The few object-storage operations the session store needs, with GCS's generation semantics.

    Generations are positive, never reused for one name (not even after a delete), and ``0`` in a
    precondition means "the object must not exist".
    """

    @abstractmethod
    def read(self, name: str) -> StoredObject | None:
        """The object's current bytes and generation, or ``None`` if it does not exist."""

    @abstractmethod
    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        """Replace (or create, with ``0``) the object if its generation matches; return the new one.

        Raises:
            PreconditionFailedError: the object's generation is not ``if_generation_match``.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete the object; a missing object is not an error."""

    @abstractmethod
    def list_names(self, prefix: str) -> list[str]:
        """Names of the objects under ``prefix`` (a folder path ending in ``/``)."""

    @abstractmethod
    def location(self, name: str) -> str:
        """Where ``name`` is, for people (``gs://bucket/name``, a file path)."""

    def read_many(self, names: Sequence[str]) -> list[StoredObject | None]:
        """:meth:`read` for each name, in order. Backends with slow round trips read in parallel."""
        return [self.read(name) for name in names]


# --- Small caches ---------------------------------------------------------------------------------------


class _SegmentCache:
    """Least-recently-used decoded segments by object name, bounded by encoded bytes."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._size = 0
        self._items: OrderedDict[str, tuple[Segment, int]] = OrderedDict()

    def get(self, name: str) -> Segment | None:
        item = self._items.get(name)
        if item is None:
            return None
        self._items.move_to_end(name)
        return item[0]

    def put(self, name: str, segment: Segment, size: int) -> None:
        if name in self._items or size > self._capacity:
            return
        self._items[name] = (segment, size)
        self._size += size
        while self._size > self._capacity:
            _, (_, dropped) = self._items.popitem(last=False)
            self._size -= dropped

    def discard(self, name: str) -> None:
        item = self._items.pop(name, None)
        if item is not None:
            self._size -= item[1]


class _SegmentMissingError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _level_for(count: int) -> int:
    """The consolidation level of a segment of ``count`` steps made at once (a compaction snapshot)."""
    level = 0
    while count >= MERGE_FANOUT ** (level + 1):
        level += 1
    return level


# --- The store ------------------------------------------------------------------------------------------


class SessionStore:
    """Sessions keyed by thread, in any :class:`ObjectBackend`; safe to share between threads.

    Writes take the generation the caller loaded and return the new one::

        session = store.load(key)
        generation = session.generation if session else 0
        generation = store.append(key, [Step(message=...)], expected_generation=generation)

    Every write either fully happens or raises; :class:`StaleSessionError` means another writer won and
    nothing of this write is visible.
    """

    def __init__(
        self,
        backend: ObjectBackend,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._backend = backend
        self._prefix = prefix.strip("/")
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._heads: OrderedDict[SessionKey, tuple[int, SessionHead]] = OrderedDict()
        self._segments = _SegmentCache(SEGMENT_CACHE_BYTES)

    @property
    def backend(self) -> ObjectBackend:
        """The object storage underneath (tests wrap it to inject faults)."""
        return self._backend

    # -- names --

    def folder(self, key: SessionKey) -> str:
        """The object-name prefix of one thread's session, ending in ``/``."""
        base = f"{self._prefix}/" if self._prefix else ""
        return f"{base}{key.path}/"

    def head_name(self, key: SessionKey) -> str:
        """The object name of a thread's head."""
        return self.folder(key) + HEAD_OBJECT

    def segment_name(self, key: SessionKey, ref: SegmentRef) -> str:
        """The object name of one of a thread's segments."""
        return f"{self.folder(key)}{STEPS_FOLDER}/{ref.name}"

    # -- reading --

    def load(self, key: SessionKey) -> Session | None:
        """The thread's session at its current generation, or ``None`` if it has none.

        Raises:
            UnsupportedSchemaVersionError: it was written by a newer Peerbot.
            SessionCorruptError: an object is unreadable or missing.
        """
        last_missing: tuple[int, str] | None = None
        for _ in range(LOAD_ATTEMPTS):
            stored = self._backend.read(self.head_name(key))
            if stored is None:
                self._forget(key)
                return None
            head = self._decode_head(key, stored.data)
            try:
                segments = self._read_segments(key, head.segments)
            except _SegmentMissingError as missing:
                if last_missing is not None and last_missing[0] == stored.generation:
                    break  # the same head twice names a segment that is gone: it will not come back
                last_missing = (stored.generation, missing.name)
                continue
            self._check_segments(key, head, segments)
            self._remember(key, stored.generation, head)
            return Session(
                key=key,
                generation=stored.generation,
                head=head,
                summary=segments[0].summary if segments else None,
                steps=tuple(step for segment in segments for step in segment.steps),
            )
        assert last_missing is not None
        raise SessionCorruptError(
            f"{self._backend.location(last_missing[1])} is named by the head of session {key} but does not "
            "exist: the session cannot be restored. Delete it (the thread starts afresh) or restore the "
            "object from a backup."
        )

    # -- writing --

    def append(
        self,
        key: SessionKey,
        steps: Sequence[Step],
        *,
        expected_generation: int,
        changes: SessionChanges | None = None,
    ) -> int:
        """Add ``steps`` to the history (and apply ``changes`` to the head) in one atomic write.

        With ``expected_generation=0`` this creates the session. ``steps`` may be empty to change only
        the head. Returns the new generation.

        Raises:
            StaleSessionError: the stored generation is not ``expected_generation``; nothing was written.
        """
        head = self._head_at(key, expected_generation)
        now = self._clock()
        if head is None:
            head = SessionHead(
                team=key.team,
                channel=key.channel,
                thread_ts=key.thread_ts,
                commit_id="",
                created_at=now,
                updated_at=now,
            )
        refs = list(head.segments)
        pending: dict[str, tuple[Segment, bytes]] = {}
        if steps:
            segment = self._segment(key, head.next_seq, list(steps), summary=None)
            refs.append(self._add_pending(pending, segment, level=0))
            try:
                refs = self._consolidate(key, refs, pending)
            except _SegmentMissingError as missing:  # a newer head's compaction removed it: we are behind
                self._forget(key)
                raise StaleSessionError(key, expected_generation, None) from missing
        updates = changes.updates() if changes is not None else {}
        new_head = head.model_copy(
            update={
                **updates,
                "commit_id": uuid.uuid4().hex,
                "updated_at": now,
                "next_seq": head.next_seq + len(steps),
                "tokens": head.tokens + total_usage(steps),
                "segments": refs,
            }
        )
        return self._commit(key, expected_generation, head, new_head, pending)

    def replace(
        self,
        key: SessionKey,
        *,
        expected_generation: int,
        summary: str,
        keep_from_seq: int,
        usage: TokenUsage | None = None,
        changes: SessionChanges | None = None,
    ) -> int:
        """Compact: replace every step before ``keep_from_seq`` with ``summary``, in one atomic write.

        ``summary`` should cover the previous summary too (it replaces it). ``usage`` is what writing the
        summary cost; it is added to the token totals. The kept steps must not start with tool results
        whose tool calls would be dropped. Returns the new generation.

        Raises:
            StaleSessionError: the stored generation is not ``expected_generation``; nothing was written.
            ValueError: there is no session, or ``keep_from_seq`` is out of range or splits a tool call
                from its result.
        """
        head = self._head_at(key, expected_generation)
        if head is None:
            raise ValueError(f"session {key} does not exist yet, so there is nothing to compact")
        if not head.first_seq <= keep_from_seq <= head.next_seq:
            raise ValueError(
                f"keep_from_seq={keep_from_seq} is outside the stored steps of session {key} "
                f"({head.first_seq} to {head.next_seq}); pass a sequence number in that range"
            )
        try:
            segments = self._read_segments(key, head.segments)
        except _SegmentMissingError as missing:  # a newer head's compaction removed it: we are behind
            self._forget(key)
            raise StaleSessionError(key, expected_generation, None) from missing
        steps = [step for segment in segments for step in segment.steps]
        kept = steps[keep_from_seq - head.first_seq :]
        orphans = orphan_tool_results(kept)
        if orphans:
            raise ValueError(
                f"keeping steps from {keep_from_seq} would drop the tool calls of results {orphans[:3]}; "
                "cut the history at a step that does not answer an earlier tool call"
            )
        previous = segments[0].summary if segments else None
        now = self._clock()
        new_summary = CompactionSummary(
            text=summary,
            through_seq=keep_from_seq,
            compactions=(previous.compactions + 1) if previous else 1,
            usage=usage or TokenUsage(),
            created_at=now,
        )
        pending: dict[str, tuple[Segment, bytes]] = {}
        snapshot = self._segment(key, keep_from_seq, kept, summary=new_summary)
        ref = self._add_pending(pending, snapshot, level=_level_for(len(kept)))
        updates = changes.updates() if changes is not None else {}
        new_head = head.model_copy(
            update={
                **updates,
                "commit_id": uuid.uuid4().hex,
                "updated_at": now,
                "first_seq": keep_from_seq,
                "tokens": head.tokens + new_summary.usage,
                "segments": [ref],
            }
        )
        generation = self._commit(key, expected_generation, head, new_head, pending)
        self._collect_garbage(key, new_head)
        return generation

    def delete(self, key: SessionKey) -> None:
        """Delete the thread's session (head first, so it disappears at once, then every segment).

        Deleting a session that does not exist is not an error. A writer still holding a generation of it
        gets :class:`StaleSessionError` on its next write.
        """
        self._backend.delete(self.head_name(key))
        self._forget(key)
        for name in self._backend.list_names(self.folder(key)):
            self._backend.delete(name)
            with self._lock:
                self._segments.discard(name)

    # -- internals: heads --

    def _decode_head(self, key: SessionKey, data: bytes) -> SessionHead:
        return decode(data, SessionHead, self._backend.location(self.head_name(key)), key)

    def _head_at(self, key: SessionKey, expected_generation: int) -> SessionHead | None:
        """The head at ``expected_generation`` (``None`` for 0), or :class:`StaleSessionError`."""
        if expected_generation < 0:
            raise ValueError(f"generations are 0 (no session) or positive, got {expected_generation}")
        with self._lock:
            cached = self._heads.get(key)
        if cached is not None and cached[0] == expected_generation:
            return cached[1]
        stored = self._backend.read(self.head_name(key))
        actual = stored.generation if stored is not None else 0
        if actual != expected_generation:
            self._forget(key)
            raise StaleSessionError(key, expected_generation, actual)
        if stored is None:
            return None
        head = self._decode_head(key, stored.data)
        self._remember(key, stored.generation, head)
        return head

    def _remember(self, key: SessionKey, generation: int, head: SessionHead) -> None:
        with self._lock:
            self._heads[key] = (generation, head)
            self._heads.move_to_end(key)
            while len(self._heads) > HEAD_CACHE_ENTRIES:
                self._heads.popitem(last=False)

    def _forget(self, key: SessionKey) -> None:
        with self._lock:
            self._heads.pop(key, None)

    # -- internals: segments --

    def _segment(
        self, key: SessionKey, first_seq: int, steps: list[Step], summary: CompactionSummary | None
    ) -> Segment:
        return Segment(
            team=key.team,
            channel=key.channel,
            thread_ts=key.thread_ts,
            first_seq=first_seq,
            summary=summary,
            steps=steps,
        )

    def _add_pending(
        self, pending: dict[str, tuple[Segment, bytes]], segment: Segment, level: int
    ) -> SegmentRef:
        data = encode(segment)
        unique = secrets.token_hex(SEGMENT_ID_CHARS // 2)
        name = f"{segment.first_seq:09d}-{len(segment.steps):09d}-{unique}.json"
        pending[name] = (segment, data)
        return SegmentRef(
            name=name, first_seq=segment.first_seq, count=len(segment.steps), level=level, size=len(data)
        )

    def _consolidate(
        self, key: SessionKey, refs: list[SegmentRef], pending: dict[str, tuple[Segment, bytes]]
    ) -> list[SegmentRef]:
        """Merge the newest :data:`MERGE_FANOUT` segments while they share a level (levels never rise)."""
        while len(refs) >= MERGE_FANOUT and len({ref.level for ref in refs[-MERGE_FANOUT:]}) == 1:
            group = refs[-MERGE_FANOUT:]
            parts: list[Segment] = []
            for ref in group:
                if ref.name in pending:
                    parts.append(pending.pop(ref.name)[0])
                else:
                    parts.append(self._read_segments(key, [ref])[0])
            merged = self._segment(
                key,
                group[0].first_seq,
                [step for part in parts for step in part.steps],
                summary=parts[0].summary,
            )
            refs = [*refs[:-MERGE_FANOUT], self._add_pending(pending, merged, level=group[-1].level + 1)]
        return refs

    def _read_segments(self, key: SessionKey, refs: Sequence[SegmentRef]) -> list[Segment]:
        found: dict[str, Segment] = {}
        missing: list[SegmentRef] = []
        with self._lock:
            for ref in refs:
                cached = self._segments.get(ref.name)
                if cached is None:
                    missing.append(ref)
                else:
                    found[ref.name] = cached
        if missing:
            names = [self.segment_name(key, ref) for ref in missing]
            for ref, name, stored in zip(missing, names, self._backend.read_many(names), strict=True):
                if stored is None:
                    raise _SegmentMissingError(name)
                segment = decode(stored.data, Segment, self._backend.location(name), key)
                found[ref.name] = segment
                with self._lock:
                    self._segments.put(ref.name, segment, len(stored.data))
        return [found[ref.name] for ref in refs]

    def _check_segments(self, key: SessionKey, head: SessionHead, segments: Sequence[Segment]) -> None:
        expected = head.first_seq
        for ref, segment in zip(head.segments, segments, strict=True):
            if (
                segment.first_seq != ref.first_seq
                or len(segment.steps) != ref.count
                or ref.first_seq != expected
            ):
                raise SessionCorruptError(
                    f"segment {self._backend.location(self.segment_name(key, ref))} does not hold steps "
                    f"{expected} onwards as its head says: delete the session or restore it from a backup"
                )
            expected += ref.count
        if expected != head.next_seq:
            raise SessionCorruptError(
                f"the segments of session {key} end at step {expected}, but its head says {head.next_seq}: "
                "delete the session or restore it from a backup"
            )

    # -- internals: committing --

    def _commit(
        self,
        key: SessionKey,
        expected_generation: int,
        old_head: SessionHead,
        new_head: SessionHead,
        pending: dict[str, tuple[Segment, bytes]],
    ) -> int:
        """Write the new segments, then the head under the generation precondition, then tidy up."""
        written: list[str] = []
        for ref_name, (segment, data) in pending.items():
            name = f"{self.folder(key)}{STEPS_FOLDER}/{ref_name}"
            self._create_segment(name, data)
            written.append(name)
            with self._lock:
                self._segments.put(ref_name, segment, len(data))
        head_name = self.head_name(key)
        data = encode(new_head)
        try:
            generation = self._backend.write(head_name, data, if_generation_match=expected_generation)
        except PreconditionFailedError:
            own = self._recognise_own_head(key, new_head.commit_id)
            if own is None:
                self._forget(key)
                for name in written:  # no head names them: remove what this failed write left behind
                    self._delete_quietly(name)
                current = self._backend.read(head_name)
                raise StaleSessionError(
                    key, expected_generation, current.generation if current else 0
                ) from None
            generation = own
        self._remember(key, generation, new_head)
        kept = {ref.name for ref in new_head.segments}
        for ref in old_head.segments:
            if ref.name not in kept:
                self._delete_quietly(self.segment_name(key, ref))
                with self._lock:
                    self._segments.discard(ref.name)
        return generation

    def _create_segment(self, name: str, data: bytes) -> None:
        try:
            self._backend.write(name, data, if_generation_match=0)
        except PreconditionFailedError:
            # Names are random, so an existing object is this very write, landed by a retry whose first
            # attempt succeeded unseen. Anything else would be a name collision: refuse to go on.
            existing = self._backend.read(name)
            if existing is None or existing.data != data:
                raise SessionError(
                    f"{self._backend.location(name)} already exists with other content; segment names are "
                    "random, so this should never happen: report it as a bug"
                ) from None

    def _recognise_own_head(self, key: SessionKey, commit_id: str) -> int | None:
        """After a 412 on the head: did an earlier attempt of this same write land? (Its generation, if so.)

        The client may resend a conditional upload whose response was lost; the resend then fails its
        precondition against our own write. The head's random ``commitId`` tells the two cases apart.
        """
        current = self._backend.read(self.head_name(key))
        if current is None:
            return None
        try:
            head = self._decode_head(key, current.data)
        except SessionError:
            return None
        return current.generation if head.commit_id == commit_id else None

    def _collect_garbage(self, key: SessionKey, head: SessionHead) -> None:
        """Delete segments the head does not name: merged-away ones and orphans of crashed writers.

        Safe at any time after ``head`` was written: a writer still working on an older generation will
        fail its head write (its segments would be orphans anyway), and a reader that loaded an older head
        re-reads the head when a segment has gone.
        """
        kept = {self.segment_name(key, ref) for ref in head.segments}
        for name in self._backend.list_names(f"{self.folder(key)}{STEPS_FOLDER}/"):
            if name not in kept:
                self._delete_quietly(name)

    def _delete_quietly(self, name: str) -> None:
        """Best-effort clean-up: an object left behind is harmless (unreferenced), so never fail a write."""
        try:
            self._backend.delete(name)
        except Exception as error:  # clean-up must never turn a committed write into a failure
            log.warning("session_cleanup_failed", object=self._backend.location(name), error=str(error))


class AsyncSessionStore:
    """The same store for asyncio code: each call runs in a worker thread (``asyncio.to_thread``)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def load(self, key: SessionKey) -> Session | None:
        """See :meth:`SessionStore.load`."""
        return await asyncio.to_thread(self.store.load, key)

    async def append(
        self,
        key: SessionKey,
        steps: Sequence[Step],
        *,
        expected_generation: int,
        changes: SessionChanges | None = None,
    ) -> int:
        """See :meth:`SessionStore.append`."""
        return await asyncio.to_thread(
            self.store.append, key, steps, expected_generation=expected_generation, changes=changes
        )

    async def replace(
        self,
        key: SessionKey,
        *,
        expected_generation: int,
        summary: str,
        keep_from_seq: int,
        usage: TokenUsage | None = None,
        changes: SessionChanges | None = None,
    ) -> int:
        """See :meth:`SessionStore.replace`."""
        return await asyncio.to_thread(
            lambda: self.store.replace(
                key,
                expected_generation=expected_generation,
                summary=summary,
                keep_from_seq=keep_from_seq,
                usage=usage,
                changes=changes,
            )
        )

    async def delete(self, key: SessionKey) -> None:
        """See :meth:`SessionStore.delete`."""
        await asyncio.to_thread(self.store.delete, key)
