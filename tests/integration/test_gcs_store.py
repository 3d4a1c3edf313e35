"""The session store contract, run against GCS (the fake-gcs-server stand-in) and the local folder alike.

Every test takes ``session_store`` / ``store_factory``, parametrized over both implementations: another
store from ``store_factory()`` has its own caches (and, for GCS, its own client), like another process.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from peerbot import constants
from peerbot.session.format import (
    Message,
    ResumeState,
    Segment,
    SessionChanges,
    SessionKey,
    Step,
    TokenUsage,
    ToolResultBlock,
    UnsupportedSchemaVersionError,
    encode,
    pending_tool_uses,
)
from peerbot.session.store import (
    MERGE_FANOUT,
    AsyncSessionStore,
    ObjectBackend,
    PreconditionFailedError,
    SessionStore,
    StaleSessionError,
    StoredObject,
)

KEY = SessionKey("T024BE7LD", "C01ABCDEF", "1700000000.123456")
#: Roughly four characters a token: 300 steps (200 of them carrying 2,000 characters) make 100k tokens.
STEPS_FOR_100K_TOKENS = 300
CHARS_PER_STEP = 2000
#: DESIGN: restore of a 100k-token session well under 200 ms from the stand-in.
RESTORE_BUDGET_SECONDS = 0.2
#: A head stays this small however long the session: scalars plus at most ~(FANOUT-1)*levels refs.
HEAD_BYTES_BOUND = 4096
#: Rounds of two writers racing on one generation.
RACE_ROUNDS = 5


def user(text: str) -> Step:
    return Step(message=Message(role="user", content=text))


def assistant(text: str, tokens: int = 0) -> Step:
    return Step(
        message=Message.model_validate({"role": "assistant", "content": [{"type": "text", "text": text}]}),
        usage=TokenUsage(input=tokens, output=tokens // 2),
    )


def tool_call(call_id: str) -> Step:
    return Step(
        message=Message.model_validate(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": call_id, "name": "read_file", "input": {"path": "README.md"}},
                ],
            }
        ),
        usage=TokenUsage(input=100, output=20, cache_read=50, cache_write=10),
    )


def tool_result(call_id: str, text: str = "# Readme") -> Step:
    return Step(message=Message(role="user", content=[ToolResultBlock(tool_use_id=call_id, content=text)]))


def segment_of(step: Step) -> Segment:
    return Segment(team=KEY.team, channel=KEY.channel, thread_ts=KEY.thread_ts, first_seq=0, steps=[step])


def dumped(steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [step.model_dump(mode="json") for step in steps]


class FaultyBackend(ObjectBackend):
    """A real backend with hooks (``before_write``, ``after_write``, ``after_read``) to inject faults."""

    def __init__(self, inner: ObjectBackend) -> None:
        self.inner = inner
        self.before_write: Callable[[str, bytes], None] = lambda name, data: None
        self.after_write: Callable[[str, bytes], None] = lambda name, data: None
        self.after_read: Callable[[str], None] = lambda name: None
        self.written: list[tuple[str, int]] = []

    def read(self, name: str) -> StoredObject | None:
        stored = self.inner.read(name)
        self.after_read(name)
        return stored

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self.before_write(name, data)
        generation = self.inner.write(name, data, if_generation_match=if_generation_match)
        self.written.append((name, len(data)))
        self.after_write(name, data)
        return generation

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list_names(self, prefix: str) -> list[str]:
        return self.inner.list_names(prefix)

    def location(self, name: str) -> str:
        return self.inner.location(name)


class Crash(Exception):
    """The worker died here."""


def faulty(store: SessionStore) -> tuple[SessionStore, FaultyBackend]:
    backend = FaultyBackend(store.backend)
    return SessionStore(backend, prefix=store.folder(KEY).split(KEY.path)[0].rstrip("/")), backend


def objects(store: SessionStore) -> list[str]:
    return store.backend.list_names(store.folder(KEY))


# --- Basics ---------------------------------------------------------------------------------------------


def test_an_unknown_thread_has_no_session(session_store: SessionStore) -> None:
    assert session_store.load(KEY) is None


def test_steps_and_changes_round_trip(store_factory: Callable[[], SessionStore]) -> None:
    writer = store_factory()
    steps = [user("Fix the README"), tool_call("toolu_1"), tool_result("toolu_1"), assistant("Done", 40)]
    generation = writer.append(
        KEY,
        steps[:1],
        expected_generation=0,
        changes=SessionChanges(repository="alice/site", branch="peerbot/c01abcdef-1700000000-123456"),
    )
    generation = writer.append(KEY, steps[1:3], expected_generation=generation)
    generation = writer.append(
        KEY,
        steps[3:],
        expected_generation=generation,
        changes=SessionChanges(answered_ts="1700000001.000200", turns=1),
    )

    session = store_factory().load(KEY)
    assert session is not None
    assert session.generation == generation
    assert dumped(session.steps) == dumped(steps)
    assert session.repository == "alice/site"
    assert session.branch == "peerbot/c01abcdef-1700000000-123456"
    assert session.answered_ts == "1700000001.000200"
    assert session.turns == 1
    assert session.tokens == TokenUsage(input=140, output=40, cache_read=50, cache_write=10)
    assert (session.first_seq, session.next_seq) == (0, 4)
    assert session.messages[1].tool_uses()[0].input == {"path": "README.md"}


def test_every_stored_object_carries_the_schema_version(session_store: SessionStore) -> None:
    session_store.append(KEY, [user("hi")], expected_generation=0)
    names = objects(session_store)
    assert any(name.endswith("/head.json") for name in names)
    assert any("/steps/" in name for name in names)
    for name in names:
        stored = session_store.backend.read(name)
        assert stored is not None
        assert json.loads(stored.data)["schemaVersion"] == constants.SESSION_SCHEMA_VERSION


def test_resume_state_is_kept_and_cleared(session_store: SessionStore) -> None:
    resume = ResumeState(reason="deadline", requested_ts="1700000001.000200", turn=2, tool_calls=7)
    generation = session_store.append(
        KEY, [tool_call("toolu_9")], expected_generation=0, changes=SessionChanges(resume=resume)
    )
    session = session_store.load(KEY)
    assert session is not None
    assert session.resume == resume
    assert [call.id for call in pending_tool_uses(session.steps)] == ["toolu_9"]
    session_store.append(
        KEY, [tool_result("toolu_9")], expected_generation=generation, changes=SessionChanges(resume=None)
    )
    session = session_store.load(KEY)
    assert session is not None
    assert session.resume is None
    assert pending_tool_uses(session.steps) == []


def test_a_newer_schema_version_fails_with_a_clear_message(session_store: SessionStore) -> None:
    session_store.append(KEY, [user("hi")], expected_generation=0)
    head_name = session_store.head_name(KEY)
    stored = session_store.backend.read(head_name)
    assert stored is not None
    raw = json.loads(stored.data)
    raw["schemaVersion"] = constants.SESSION_SCHEMA_VERSION + 1
    session_store.backend.write(head_name, json.dumps(raw).encode(), if_generation_match=stored.generation)
    with pytest.raises(UnsupportedSchemaVersionError, match="run a newer Peerbot"):
        session_store.load(KEY)


# --- Generations ----------------------------------------------------------------------------------------


def test_creating_an_existing_session_is_stale(store_factory: Callable[[], SessionStore]) -> None:
    store_factory().append(KEY, [user("first")], expected_generation=0)
    with pytest.raises(StaleSessionError, match="already exists") as error:
        store_factory().append(KEY, [user("second")], expected_generation=0)
    assert error.value.expected_generation == 0


def test_a_stale_write_raises_and_writes_nothing(store_factory: Callable[[], SessionStore]) -> None:
    first, second = store_factory(), store_factory()
    generation = first.append(KEY, [user("one")], expected_generation=0)
    newer = second.append(KEY, [assistant("two")], expected_generation=generation)
    before = objects(first)
    with pytest.raises(StaleSessionError, match="changed since it was loaded") as error:
        first.append(KEY, [assistant("lost?")], expected_generation=generation)
    assert error.value.actual_generation == newer
    assert objects(first) == before  # the loser's segment was removed again
    session = store_factory().load(KEY)
    assert session is not None
    assert session.generation == newer
    assert [m.text for m in session.messages] == ["one", "two"]


def test_writes_after_a_delete_are_stale(session_store: SessionStore) -> None:
    generation = session_store.append(KEY, [user("hi")], expected_generation=0)
    session_store.delete(KEY)
    assert session_store.load(KEY) is None
    assert objects(session_store) == []
    with pytest.raises(StaleSessionError, match="was deleted"):
        session_store.append(KEY, [user("again")], expected_generation=generation)
    assert session_store.append(KEY, [user("afresh")], expected_generation=0) != generation
    session_store.delete(KEY)
    session_store.delete(KEY)  # deleting nothing is fine


def race(writers: Sequence[SessionStore], base: int, label: str) -> dict[int, int | StaleSessionError]:
    """All writers append at once on generation ``base``; what each got back."""
    barrier = threading.Barrier(len(writers), timeout=10)
    outcomes: dict[int, int | StaleSessionError] = {}

    def write(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = writers[index].append(
                KEY, [assistant(f"{label} by {index}")], expected_generation=base
            )
        except StaleSessionError as error:
            outcomes[index] = error

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == len(writers), "a writer neither won nor lost"
    return outcomes


def test_two_racing_writers_end_with_exactly_one_winner(store_factory: Callable[[], SessionStore]) -> None:
    writers = [store_factory(), store_factory()]
    generation = writers[0].append(KEY, [user("start")], expected_generation=0)
    expected_texts = ["start"]
    for round_number in range(RACE_ROUNDS):
        outcomes = race(writers, generation, f"round {round_number}")
        winners = {i: g for i, g in outcomes.items() if isinstance(g, int)}
        losers = [e for e in outcomes.values() if isinstance(e, StaleSessionError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        ((winner, generation),) = winners.items()
        assert losers[0].actual_generation in (generation, None)
        expected_texts.append(f"round {round_number} by {winner}")

    session = store_factory().load(KEY)
    assert session is not None
    assert session.generation == generation
    assert [m.text for m in session.messages] == expected_texts
    assert len(objects(store_factory())) == 1 + len(session.head.segments)  # the losers left nothing


# --- Crashes and ambiguous retries ----------------------------------------------------------------------


def test_a_crash_between_segment_and_head_corrupts_nothing(store_factory: Callable[[], SessionStore]) -> None:
    generation = store_factory().append(KEY, [user("before the crash")], expected_generation=0)
    doomed, backend = faulty(store_factory())

    def die_at_head(name: str, data: bytes) -> None:
        if name.endswith("/head.json"):
            raise Crash

    backend.before_write = die_at_head
    with pytest.raises(Crash):
        doomed.append(KEY, [assistant("never committed")], expected_generation=generation)

    survivor = store_factory()
    session = survivor.load(KEY)
    assert session is not None
    assert session.generation == generation
    assert [m.text for m in session.messages] == ["before the crash"]
    assert len(objects(survivor)) == 3  # head, its segment, and the crashed writer's orphan

    # The next worker carries on from the last committed generation; the orphan is never read.
    generation = survivor.append(KEY, [assistant("after the crash")], expected_generation=generation)
    session = store_factory().load(KEY)
    assert session is not None
    assert [m.text for m in session.messages] == [
        "before the crash",
        "after the crash",
    ]
    # Compaction removes whatever no head names.
    survivor.replace(KEY, expected_generation=generation, summary="a greeting", keep_from_seq=1)
    assert len(objects(survivor)) == 2


def test_a_crash_during_a_merge_keeps_every_step(store_factory: Callable[[], SessionStore]) -> None:
    writer = store_factory()
    generation = 0
    for i in range(MERGE_FANOUT - 1):
        generation = writer.append(KEY, [user(f"step {i}")], expected_generation=generation)
    doomed, backend = faulty(store_factory())

    def die_at_head(name: str, data: bytes) -> None:
        if name.endswith("/head.json"):
            raise Crash

    backend.before_write = die_at_head
    with pytest.raises(Crash):  # this append merges all segments into one, then dies before the head
        doomed.append(KEY, [user("merging")], expected_generation=generation)
    session = store_factory().load(KEY)
    assert session is not None
    assert [m.text for m in session.messages] == [f"step {i}" for i in range(MERGE_FANOUT - 1)]
    generation = writer.append(KEY, [user("merged")], expected_generation=generation)
    session = store_factory().load(KEY)
    assert session is not None
    assert len(session.head.segments) == 1
    assert session.messages[-1].text == "merged"


def test_a_retried_head_write_that_had_landed_counts_as_success(
    store_factory: Callable[[], SessionStore],
) -> None:
    """The client resends an upload whose answer was lost; the resend gets 412 against our own write."""
    store, backend = faulty(store_factory())
    generation = store.append(KEY, [user("one")], expected_generation=0)

    def lost_answer(name: str, data: bytes) -> None:
        if name.endswith("/head.json"):
            raise PreconditionFailedError("412 on the resend")

    backend.after_write = lost_answer
    new_generation = store.append(KEY, [user("two")], expected_generation=generation)
    session = store_factory().load(KEY)
    assert session is not None
    assert session.generation == new_generation
    assert [m.text for m in session.messages] == ["one", "two"]


def test_a_load_racing_a_compaction_rereads_the_head(store_factory: Callable[[], SessionStore]) -> None:
    writer = store_factory()
    generation = 0
    for i in range(3):
        generation = writer.append(KEY, [user(f"step {i}")], expected_generation=generation)
    reader, backend = faulty(store_factory())
    compacted = threading.Event()

    def compact_after_head_read(name: str) -> None:
        # The reader has the old head; before it reads the segments, a compaction deletes them.
        if name.endswith("/head.json") and not compacted.is_set():
            compacted.set()
            writer.replace(KEY, expected_generation=generation, summary="steps 0 and 1", keep_from_seq=2)

    backend.after_read = compact_after_head_read
    session = reader.load(KEY)
    assert compacted.is_set()
    assert session is not None
    assert session.summary is not None
    assert [m.text for m in session.messages] == ["step 2"]


def test_an_append_racing_a_compaction_is_stale(store_factory: Callable[[], SessionStore]) -> None:
    writer = store_factory()
    generation = 0
    for i in range(MERGE_FANOUT - 1):
        generation = writer.append(KEY, [user(f"step {i}")], expected_generation=generation)
    late, backend = faulty(store_factory())
    compacted = threading.Event()

    def compact_after_head_read(name: str) -> None:
        # The late writer has read the head and now needs the segments for a merge; they are gone.
        if name.endswith("/head.json") and not compacted.is_set():
            compacted.set()
            writer.replace(KEY, expected_generation=generation, summary="early steps", keep_from_seq=5)

    backend.after_read = compact_after_head_read
    with pytest.raises(StaleSessionError):
        late.append(KEY, [user("merging")], expected_generation=generation)
    session = store_factory().load(KEY)
    assert session is not None
    assert [m.text for m in session.messages] == ["step 5", "step 6"]


# --- Compaction -----------------------------------------------------------------------------------------


def test_compaction_replaces_old_steps_with_a_summary(store_factory: Callable[[], SessionStore]) -> None:
    writer = store_factory()
    steps = [
        user("Fix it"),
        tool_call("toolu_1"),
        tool_result("toolu_1"),
        assistant("Fixed", 10),
        user("Thanks"),
    ]
    generation = writer.append(KEY, steps, expected_generation=0)
    summary_cost = TokenUsage(input=500, output=80)
    generation = writer.replace(
        KEY,
        expected_generation=generation,
        summary="The user asked for a fix; it was made.",
        keep_from_seq=3,
        usage=summary_cost,
        changes=SessionChanges(turns=1),
    )
    session = store_factory().load(KEY)
    assert session is not None
    assert session.generation == generation
    assert session.summary is not None
    assert session.summary.text == "The user asked for a fix; it was made."
    assert (session.summary.through_seq, session.summary.compactions) == (3, 1)
    assert dumped(session.steps) == dumped(steps[3:])
    assert (session.first_seq, session.next_seq, session.turns) == (3, 5, 1)
    assert session.tokens == TokenUsage(input=610, output=105, cache_read=50, cache_write=10)  # nothing lost

    generation = writer.append(KEY, [assistant("You're welcome")], expected_generation=generation)
    generation = writer.replace(KEY, expected_generation=generation, summary="all of it", keep_from_seq=6)
    session = store_factory().load(KEY)
    assert session is not None
    assert session.steps == ()
    assert session.summary is not None
    assert session.summary.compactions == 2


def test_compaction_refuses_bad_cuts_and_stale_generations(session_store: SessionStore) -> None:
    steps = [user("Fix it"), tool_call("toolu_1"), tool_result("toolu_1")]
    generation = session_store.append(KEY, steps, expected_generation=0)
    with pytest.raises(ValueError, match="drop the tool calls"):
        session_store.replace(KEY, expected_generation=generation, summary="s", keep_from_seq=2)
    with pytest.raises(ValueError, match="outside the stored steps"):
        session_store.replace(KEY, expected_generation=generation, summary="s", keep_from_seq=4)
    with pytest.raises(StaleSessionError):
        session_store.replace(KEY, expected_generation=generation + 1, summary="s", keep_from_seq=1)
    with pytest.raises(ValueError, match="nothing to compact"):
        session_store.replace(
            SessionKey("T1", "C1", "1.1"), expected_generation=0, summary="s", keep_from_seq=0
        )


# --- Size and speed -------------------------------------------------------------------------------------


def long_session() -> list[Step]:
    steps: list[Step] = []
    for i in range(STEPS_FOR_100K_TOKENS // 3):
        call = f"toolu_{i:04d}"
        steps.append(tool_call(call))
        steps.append(tool_result(call, "x" * CHARS_PER_STEP))
        steps.append(assistant(f"Step {i}: " + "y" * CHARS_PER_STEP, tokens=300))
    return steps


def test_a_100k_token_session_round_trips_and_restores_fast(
    store_factory: Callable[[], SessionStore],
) -> None:
    steps = long_session()
    assert sum(len(json.dumps(step.message.to_api())) for step in steps) > 4 * 100_000 * 0.9
    writer, backend = faulty(store_factory())
    generation = 0
    checkpoint_bytes: list[int] = []
    for step in steps:  # one checkpoint per step, as the worker does
        before = len(backend.written)
        generation = writer.append(KEY, [step], expected_generation=generation)
        checkpoint_bytes.append(sum(size for _, size in backend.written[before:]))

    # Bytes per checkpoint follow the step, not the session: a checkpoint that merged nothing wrote
    # its step's segment and a small head, at step 300 as at step 10.
    step_sizes = [len(encode(segment_of(step))) for step in steps]
    plain = [
        written - size
        for written, size in zip(checkpoint_bytes, step_sizes, strict=True)
        if written < 2 * size + HEAD_BYTES_BOUND
    ]
    assert len(plain) >= len(steps) * (MERGE_FANOUT - 1) / MERGE_FANOUT
    assert max(plain) < HEAD_BYTES_BOUND
    # ...and over the whole session each step is rewritten only about log(n, FANOUT) times.
    amplification = sum(checkpoint_bytes) / sum(step_sizes)
    assert amplification < math.log(len(steps), MERGE_FANOUT) + 2.5

    timings = []
    for _ in range(3):  # each load is cold: a new store, no cache
        reader = store_factory()
        started = time.perf_counter()
        session = reader.load(KEY)
        timings.append(time.perf_counter() - started)
        assert session is not None
        assert session.generation == generation
        assert len(session.head.segments) <= (MERGE_FANOUT - 1) * math.ceil(
            math.log(len(steps), MERGE_FANOUT)
        )
        assert dumped(session.steps) == dumped(steps)
    assert min(timings) < RESTORE_BUDGET_SECONDS, timings


# --- asyncio --------------------------------------------------------------------------------------------


async def test_the_async_wrapper_does_the_same(session_store: SessionStore) -> None:
    store = AsyncSessionStore(session_store)
    generation = await store.append(KEY, [user("hi")], expected_generation=0)
    results = await asyncio.gather(
        store.append(KEY, [user("a")], expected_generation=generation),
        store.append(KEY, [user("b")], expected_generation=generation),
        return_exceptions=True,
    )
    assert sorted(type(result).__name__ for result in results) == ["StaleSessionError", "int"]
    session = await store.load(KEY)
    assert session is not None
    assert len(session.steps) == 2
    generation = session.generation
    generation = await store.replace(KEY, expected_generation=generation, summary="s", keep_from_seq=1)
    await store.delete(KEY)
    assert await store.load(KEY) is None
