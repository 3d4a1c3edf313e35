"""Conversations in a folder (``peerbot local``): the Kubernetes store's promises, kept by files and locks.

The dispatcher relies on the same things from both stores: one Conversation per thread however often a
request is recorded, ``requestedTs`` moving forward only, a status message pointer that a newer request
wins, versions that refuse a stale write, and writes that never leave half a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from peerbot.conversation import ConversationSpec
from peerbot.dispatcher.rules import FileRef
from peerbot.dispatcher.store import (
    FILES_ANNOTATION,
    ConversationBackend,
    ConversationStore,
    RequestRecord,
    StoreError,
    WriteOutcome,
)
from peerbot.local.store import (
    AlreadyExistsError,
    ConflictError,
    ConversationFiles,
    DamagedRecordError,
    FileConversationStore,
    InvalidRecordError,
    NotFoundError,
    apply_merge_patch,
)

NAME = "t024be7ld-c01abcdef-1700000000-000100"
THREAD = "1700000000.000100"
#: Processes and increments in the cross-process lost-update test.
PROCESSES = 4
INCREMENTS = 25

_COUNTER_SCRIPT = """
import sys
from pathlib import Path
from peerbot.local.store import ConversationFiles

files = ConversationFiles(Path(sys.argv[1]), durable=False)

def bump(current):
    current["status"]["turns"] = current["status"].get("turns", 0) + 1
    return current

for _ in range(int(sys.argv[2])):
    files.modify(sys.argv[3], bump)
"""


def request(ts: str, **spec: object) -> RequestRecord:
    values: dict[str, object] = {
        "team": "T024BE7LD",
        "channel": "C01ABCDEF",
        "threadTs": THREAD,
        "user": "U0ALICE",
        "requestedTs": ts,
    }
    values.update(spec)
    return RequestRecord(NAME, ConversationSpec.model_validate(values))


@pytest.fixture
def files(tmp_path: Path) -> ConversationFiles:
    return ConversationFiles(tmp_path / "conversations", durable=False)


@pytest.fixture
def store(files: ConversationFiles) -> FileConversationStore:
    return FileConversationStore(files)


def _kubernetes_store_is_a_backend_too(store: ConversationStore) -> ConversationBackend:
    return store  # checked by mypy: both stores satisfy the dispatcher's protocol


def test_the_file_store_is_a_conversation_backend(store: FileConversationStore) -> None:
    # mypy checks the protocol; this checks that nothing is missing at run time.
    backend: ConversationBackend = store
    for method in ("get", "ping", "record", "set_status_message", "request_cancel"):
        assert callable(getattr(backend, method))


async def test_recording_twice_is_one_conversation_and_the_file_is_the_api_object(
    store: FileConversationStore, files: ConversationFiles
) -> None:
    first = await store.record(request(THREAD, repository="acme/app"))
    again = await store.record(request(THREAD))
    assert (first.outcome, again.outcome) == (WriteOutcome.CREATED, WriteOutcome.UNCHANGED)
    assert files.names() == [NAME]
    stored = json.loads(files.path(NAME).read_text())
    assert stored["apiVersion"] == "peerbot.ai/v1"
    assert stored["kind"] == "Conversation"
    assert stored["spec"] == {
        "team": "T024BE7LD",
        "channel": "C01ABCDEF",
        "threadTs": THREAD,
        "user": "U0ALICE",
        "repository": "acme/app",
        "requestedTs": THREAD,
    }
    metadata = stored["metadata"]
    assert (metadata["resourceVersion"], metadata["generation"]) == ("1", 1)
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "peerbot-dispatcher"
    assert metadata["uid"]
    assert metadata["creationTimestamp"].endswith("Z")
    assert list((files.folder / ".tmp").iterdir()) == []  # no temporary file left behind


async def test_requested_ts_only_moves_forward_and_a_follow_up_drops_the_old_status_message(
    store: FileConversationStore, files: ConversationFiles
) -> None:
    await store.record(request(THREAD))
    assert await store.set_status_message(NAME, THREAD, "1700000000.000200")
    newer = await store.record(request("1700000000.000900", repository="acme/other"))
    assert newer.outcome is WriteOutcome.UPDATED
    older = await store.record(request("1700000000.000300"))
    assert older.outcome is WriteOutcome.UNCHANGED
    spec = (await store.get(NAME) or {})["spec"]
    assert spec["requestedTs"] == "1700000000.000900"
    assert spec["repository"] == "acme/other"
    assert "statusMessageTs" not in spec
    # The status message of the older request arrives late: the newer request's pointer wins.
    assert not await store.set_status_message(NAME, THREAD, "1700000000.000950")
    assert "statusMessageTs" not in (await store.get(NAME) or {})["spec"]


async def test_timestamps_compare_as_numbers(store: FileConversationStore) -> None:
    await store.record(request("1700000000.9"))
    assert (await store.record(request("1700000000.10"))).outcome is WriteOutcome.UNCHANGED


async def test_file_references_ride_in_the_annotation_until_answered(
    store: FileConversationStore, files: ConversationFiles
) -> None:
    await store.record(RequestRecord(NAME, request(THREAD).spec, (FileRef("F1"),)))
    await store.record(RequestRecord(NAME, request("1700000000.000500").spec, (FileRef("F2"),)))
    pending = json.loads((await store.get(NAME) or {})["metadata"]["annotations"][FILES_ANNOTATION])
    assert set(pending) == {THREAD, "1700000000.000500"}


async def test_versions_count_writes_and_a_stale_version_is_refused(files: ConversationFiles) -> None:
    store = FileConversationStore(files)
    await store.record(request(THREAD))
    files.patch_status(NAME, {"phase": "Running", "turns": 1})
    stored = files.get(NAME)
    assert stored is not None
    assert stored["metadata"]["resourceVersion"] == "2"
    assert stored["metadata"]["generation"] == 1  # a status write is not a spec change
    await store.record(request("1700000000.000500"))
    stored = files.get(NAME)
    assert stored is not None
    assert (stored["metadata"]["resourceVersion"], stored["metadata"]["generation"]) == ("3", 2)
    with pytest.raises(ConflictError, match="read it again"):
        files.patch(NAME, {"status": {"turns": 9}}, kind="merge", expected_version="2")
    files.patch(NAME, {"status": {"turns": 9}}, kind="merge", expected_version="3")
    assert (files.get(NAME) or {})["status"]["turns"] == 9


async def test_status_patches_merge_and_null_removes(files: ConversationFiles) -> None:
    await FileConversationStore(files).record(request(THREAD))
    files.patch_status(NAME, {"phase": "Running", "error": "x", "tokens": {"input": 1}})
    files.patch_status(NAME, {"error": None, "tokens": {"output": 2}})
    status = (files.get(NAME) or {})["status"]
    assert "error" not in status
    assert status["tokens"] == {"input": 1, "output": 2}
    assert apply_merge_patch({"a": {"b": 1}}, {"a": None, "c": [1]}) == {"c": [1]}


async def test_a_write_the_schema_refuses_changes_nothing(files: ConversationFiles) -> None:
    await FileConversationStore(files).record(request(THREAD))
    before = files.path(NAME).read_bytes()
    with pytest.raises(InvalidRecordError, match="phase"):
        files.patch_status(NAME, {"phase": "Bogus"})
    with pytest.raises(AlreadyExistsError):
        files.create({"metadata": {"name": NAME}, "spec": request(THREAD).spec.to_api()})
    assert files.path(NAME).read_bytes() == before


async def test_cancel_and_missing_conversations(
    store: FileConversationStore, files: ConversationFiles
) -> None:
    with pytest.raises(NotFoundError):
        await store.request_cancel(NAME, datetime(2025, 1, 1, tzinfo=UTC))
    assert not await store.set_status_message(NAME, THREAD, "1700000000.000200")
    await store.record(request(THREAD))
    updated = await store.request_cancel(NAME, datetime(2025, 1, 1, 12, tzinfo=UTC))
    assert updated["spec"]["cancelRequestedAt"] == "2025-01-01T12:00:00.000000Z"
    assert files.delete(NAME)
    assert not files.delete(NAME)
    assert await store.get(NAME) is None
    assert not (files.folder / ".locks" / f"{NAME}.lock").exists()


async def test_a_damaged_file_is_named_with_what_to_do(files: ConversationFiles) -> None:
    files.path(NAME).write_text("{not json")
    with pytest.raises(DamagedRecordError, match="fix it with an editor or delete it"):
        files.get(NAME)


def test_names_never_leave_the_folder(files: ConversationFiles) -> None:
    with pytest.raises(InvalidRecordError, match="DNS label"):
        files.path("../escape")


async def test_writers_are_told_when_something_changed(files: ConversationFiles) -> None:
    seen: list[str] = []
    store = FileConversationStore(files, on_change=seen.append)
    await store.record(request(THREAD))
    await store.record(request(THREAD))  # unchanged: nothing to plan
    await store.set_status_message(NAME, THREAD, "1700000000.000200")
    assert seen == [NAME, NAME]


async def test_ping_says_when_the_folder_is_unusable(tmp_path: Path) -> None:
    import shutil

    files = ConversationFiles(tmp_path / "c", durable=False)
    await FileConversationStore(files).ping()
    shutil.rmtree(files.folder)
    with pytest.raises(StoreError, match="cannot be used"):
        await FileConversationStore(files).ping()


def test_racing_threads_record_one_conversation_at_the_newest_request(files: ConversationFiles) -> None:
    import asyncio

    stamps = [f"1700000000.{n:06d}" for n in range(100, 120)]
    outcomes: list[WriteOutcome] = []
    barrier = threading.Barrier(len(stamps))

    def write(ts: str) -> None:
        barrier.wait()
        outcomes.append(asyncio.run(FileConversationStore(files).record(request(ts))).outcome)

    threads = [threading.Thread(target=write, args=(ts,)) for ts in stamps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes.count(WriteOutcome.CREATED) == 1
    assert (files.get(NAME) or {})["spec"]["requestedTs"] == stamps[-1]
    assert files.names() == [NAME]


def test_no_update_is_lost_between_processes(files: ConversationFiles) -> None:
    import asyncio

    asyncio.run(FileConversationStore(files).record(request(THREAD)))
    processes = [
        subprocess.Popen([sys.executable, "-c", _COUNTER_SCRIPT, str(files.folder), str(INCREMENTS), NAME])
        for _ in range(PROCESSES)
    ]
    for process in processes:
        assert process.wait(60) == 0
    stored = files.get(NAME)
    assert stored is not None
    assert stored["status"]["turns"] == PROCESSES * INCREMENTS
    assert stored["metadata"]["resourceVersion"] == str(1 + PROCESSES * INCREMENTS)


def test_a_writer_waiting_on_a_deleted_conversations_lock_locks_the_new_file(
    files: ConversationFiles,
) -> None:
    import asyncio

    asyncio.run(FileConversationStore(files).record(request(THREAD)))
    created = threading.Event()

    def recreate() -> None:
        files.create({"metadata": {"name": NAME}, "spec": request("1700000000.000900").spec.to_api()})
        created.set()

    with files._locked(NAME):
        writer = threading.Thread(target=recreate)
        writer.start()
        # What delete() does while holding the lock: the file and its lock file go.
        files.path(NAME).unlink()
        (files.folder / ".locks" / f"{NAME}.lock").unlink()
    writer.join(10)
    assert created.is_set()
    assert (files.get(NAME) or {})["spec"]["requestedTs"] == "1700000000.000900"
