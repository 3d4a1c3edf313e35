"""The local-folder store: plain JSON files, GCS-like generations, and a lock that works across processes.

The store contract itself (races, crashes, compaction, size) runs against both stores in
``tests/integration/test_gcs_store.py``; this file covers what is particular to the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerbot.session.format import Message, SessionKey, Step, TokenUsage
from peerbot.session.local import LocalObjects, LocalSessionStore
from peerbot.session.store import PreconditionFailedError
from tests.unit.test_session_format import steps as step_strategy

KEY = SessionKey("T024BE7LD", "C01ABCDEF", "1700000000.123456")
#: Increments each process makes in the cross-process lost-update test.
INCREMENTS = 60

_COUNTER_SCRIPT = """
import sys
from pathlib import Path
from peerbot.session.local import LocalObjects
from peerbot.session.store import PreconditionFailedError

objects = LocalObjects(Path(sys.argv[1]), durable=False)
done = 0
while done < int(sys.argv[2]):
    stored = objects.read("counter")
    value = int(stored.data) + 1
    try:
        objects.write("counter", str(value).encode(), if_generation_match=stored.generation)
    except PreconditionFailedError:
        continue  # someone else incremented first: read again
    done += 1
"""


def test_files_are_plain_json_under_the_thread(tmp_path: Path) -> None:
    store = LocalSessionStore(tmp_path)
    store.append(KEY, [Step(message=Message(role="user", content="hi"))], expected_generation=0)
    folder = tmp_path / "T024BE7LD" / "C01ABCDEF" / "1700000000.123456"
    head = json.loads((folder / "head.json").read_text())
    assert head["kind"] == "head"
    assert head["nextSeq"] == 1
    (segment_file,) = (folder / "steps").iterdir()
    assert json.loads(segment_file.read_text())["steps"][0]["message"] == {"role": "user", "content": "hi"}
    assert list((tmp_path / ".tmp").iterdir()) == []  # no temporary file left behind


def test_generations_grow_and_are_never_reused(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path)
    first = objects.write("a/b", b"1", if_generation_match=0)
    second = objects.write("a/b", b"2", if_generation_match=first)
    stored = objects.read("a/b")
    assert stored is not None
    assert (stored.data, stored.generation) == (b"2", second)
    assert 0 < first < second
    objects.delete("a/b")
    assert objects.read("a/b") is None
    assert not (tmp_path / "a").exists()  # emptied folders are pruned
    assert objects.write("a/b", b"3", if_generation_match=0) > second


def test_conditional_writes_refuse_like_gcs_and_leave_the_file_alone(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path)
    first = objects.write("o", b"1", if_generation_match=0)
    with pytest.raises(PreconditionFailedError):
        objects.write("o", b"x", if_generation_match=0)  # must not exist
    second = objects.write("o", b"2", if_generation_match=first)
    with pytest.raises(PreconditionFailedError):
        objects.write("o", b"x", if_generation_match=first)  # stale
    with pytest.raises(PreconditionFailedError):
        objects.write("missing", b"x", if_generation_match=second)  # a generation of nothing
    stored = objects.read("o")
    assert stored is not None
    assert stored.data == b"2"
    assert objects.read("missing") is None


@pytest.mark.parametrize("name", ["", "../escape", "a/../b", ".hidden", "a//b", "/abs"])
def test_object_names_stay_inside_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain relative path"):
        LocalObjects(tmp_path).read(name)


def test_racing_threads_have_exactly_one_winner(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path, durable=False)
    base = objects.write("o", b"start", if_generation_match=0)
    writers = 8
    barrier = threading.Barrier(writers, timeout=10)
    won: list[int] = []
    lost: list[int] = []

    def write(index: int) -> None:
        barrier.wait()
        try:
            objects.write("o", str(index).encode(), if_generation_match=base)
            won.append(index)
        except PreconditionFailedError:
            lost.append(index)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(won) == 1
    assert len(lost) == writers - 1
    stored = objects.read("o")
    assert stored is not None
    assert stored.data == str(won[0]).encode()


def test_no_update_is_lost_between_processes(tmp_path: Path) -> None:
    objects = LocalObjects(tmp_path, durable=False)
    objects.write("counter", b"0", if_generation_match=0)
    root = Path(__file__).resolve().parents[2]
    processes = [
        subprocess.Popen([sys.executable, "-c", _COUNTER_SCRIPT, str(tmp_path), str(INCREMENTS)], cwd=root)
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=60) == 0
    stored = objects.read("counter")
    assert stored is not None
    assert int(stored.data) == 2 * INCREMENTS


def test_durable_and_fast_modes_store_the_same(tmp_path: Path) -> None:
    step = Step(message=Message(role="user", content="hi"), usage=TokenUsage(input=3))
    for durable in (True, False):
        store = LocalSessionStore(tmp_path / str(durable), durable=durable)
        generation = store.append(KEY, [step], expected_generation=0)
        session = LocalSessionStore(tmp_path / str(durable)).load(KEY)
        assert session is not None
        assert session.generation == generation
        assert session.steps == (step,)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(step_strategy, min_size=1, max_size=3), min_size=1, max_size=12))
def test_any_history_round_trips_through_the_folder(batches: list[list[Step]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = LocalSessionStore(folder, durable=False)
        generation = 0
        for batch in batches:
            generation = store.append(KEY, batch, expected_generation=generation)
        session = LocalSessionStore(folder).load(KEY)
    expected = [step for batch in batches for step in batch]
    assert session is not None
    assert session.generation == generation
    assert [s.model_dump(mode="json") for s in session.steps] == [s.model_dump(mode="json") for s in expected]
    total = TokenUsage()
    for step in expected:
        total = total + step.usage
    assert session.tokens == total
