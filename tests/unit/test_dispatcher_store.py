"""The dispatcher's pure pieces around the store: follow-up patches, cancel rules, caches, metrics, errors."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jsonpatch
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot.conversation import ConversationSpec
from peerbot.dispatcher.cache import TTLCache
from peerbot.dispatcher.metrics import Metrics
from peerbot.dispatcher.rules import FileRef
from peerbot.dispatcher.store import (
    FILES_ANNOTATION,
    ConversationStore,
    RequestRecord,
    cancel_pending,
    explain,
    is_working,
)

SPEC: dict[str, Any] = {
    "team": "T1",
    "channel": "C1",
    "threadTs": "1700000000.000100",
    "user": "U1",
    "requestedTs": "1700000000.000100",
}


def conversation(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    return {"metadata": {"name": "c", **meta}, "spec": {**SPEC, **(spec or {})}, "status": status or {}}


def request(ts: str, *, repository: str | None = None, files: tuple[FileRef, ...] = ()) -> RequestRecord:
    spec = ConversationSpec.model_validate({**SPEC, "requestedTs": ts, "repository": repository})
    return RequestRecord("c", spec, files)


def patch_for(current: dict[str, Any], wanted: RequestRecord) -> list[dict[str, Any]] | None:
    store = ConversationStore.__new__(ConversationStore)
    return store._follow_up_patch(current, wanted)


# --- follow-up patches -----------------------------------------------------------------------------------


def test_follow_up_patch_tests_the_value_it_read_then_moves_it_forward() -> None:
    current = conversation()
    ops = patch_for(current, request("1700000001.000001"))
    assert ops is not None
    assert ops[0] == {"op": "test", "path": "/spec/requestedTs", "value": "1700000000.000100"}
    patched = jsonpatch.apply_patch(current, ops)
    assert patched["spec"]["requestedTs"] == "1700000001.000001"


def test_a_racing_writer_that_read_an_older_value_fails_its_test() -> None:
    stale = conversation()
    ops = patch_for(stale, request("1700000001.000001"))
    assert ops is not None
    meanwhile = conversation({"requestedTs": "1700000002.000000"})
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(meanwhile, ops)


@pytest.mark.parametrize("ts", ["1700000000.000100", "1699999999.999999"])
def test_same_or_older_message_changes_nothing(ts: str) -> None:
    assert patch_for(conversation(), request(ts)) is None


def test_timestamps_compare_as_numbers_not_text() -> None:
    current = conversation({"requestedTs": "999999999.9"})
    assert patch_for(current, request("1000000000.1")) is not None


def test_follow_up_sets_the_repository_and_drops_the_old_status_message() -> None:
    current = conversation({"statusMessageTs": "1700000000.000200"})
    ops = patch_for(current, request("1700000001.000001", repository="octo/hello"))
    assert ops is not None
    patched = jsonpatch.apply_patch(current, ops)
    assert patched["spec"]["repository"] == "octo/hello"
    assert "statusMessageTs" not in patched["spec"]


def test_file_references_accumulate_until_answered() -> None:
    first = FileRef("F1", "a.txt", "text/plain", 3)
    current = conversation(status={"answeredTs": "1700000000.000100"})
    ops = patch_for(current, request("1700000001.000001", files=(first,)))
    assert ops is not None
    patched = jsonpatch.apply_patch(current, ops)
    pending = json.loads(patched["metadata"]["annotations"][FILES_ANNOTATION])
    assert pending == {"1700000001.000001": [first.to_json()]}
    # A later message without files keeps the earlier, unanswered references.
    later = patch_for(patched, request("1700000002.000001"))
    assert later is not None
    assert all(op["path"].startswith("/spec") for op in later)
    # Once the message with files is answered, its references go.
    patched["status"]["answeredTs"] = "1700000001.000001"
    cleared = patch_for(patched, request("1700000003.000001"))
    assert cleared is not None
    final = jsonpatch.apply_patch(patched, cleared)
    assert FILES_ANNOTATION not in (final["metadata"].get("annotations") or {})


def test_new_object_carries_labels_and_only_pointers() -> None:
    store = ConversationStore.__new__(ConversationStore)
    body = store._new_object(request("1700000000.000100", files=(FileRef("F1"),)))
    assert body["metadata"]["labels"]["peerbot.ai/team"] == "T1"
    assert body["spec"] == SPEC
    assert "text" not in json.dumps(body["spec"])
    assert FILES_ANNOTATION in body["metadata"]["annotations"]


# --- stop ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "working"),
    [
        ({}, True),
        ({"phase": "Pending"}, True),
        ({"phase": "Queued"}, True),
        ({"phase": "Running"}, True),
        ({"phase": "Waiting", "answeredTs": "1700000000.000100"}, False),
        ({"phase": "Failed", "attemptedTs": "1700000000.000100"}, False),
        ({"phase": "Waiting", "answeredTs": "1600000000.000100"}, True),  # a newer request waits
        ({"phase": "Cancelled", "answeredTs": "1700000000.000100"}, False),
    ],
)
def test_stop_applies_while_work_runs_or_waits(status: dict[str, Any], working: bool) -> None:
    assert is_working(conversation(status=status)) is working


def test_cancel_pending_until_the_operator_carries_it_out() -> None:
    asked = {"cancelRequestedAt": "2026-01-01T00:00:01.000000Z"}
    assert cancel_pending(conversation(asked))
    assert not cancel_pending(conversation(asked, {"cancelledAt": "2026-01-01T00:00:01Z"}))
    assert cancel_pending(conversation(asked, {"cancelledAt": "2026-01-01T00:00:00Z"}))
    assert not cancel_pending(conversation())


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (ApiException(status=403, reason="Forbidden"), "kubernetes_forbidden", "Role"),
        (ApiException(status=404, reason="Not Found"), "kubernetes_not_found", "CRD"),
        (ApiException(status=422, reason="Invalid"), "kubernetes_invalid", "refused"),
        (ApiException(status=503, reason="Unavailable"), "kubernetes_unavailable", "503"),
        (TimeoutError(), "kubernetes_timeout", "in time"),
        (aiohttp.ClientConnectionError(), "kubernetes_unreachable", "unreachable"),
        (KeyError("secret detail"), "internal", "unexpected error in the dispatcher (KeyError)"),
    ],
)
def test_errors_are_explained_for_people(error: BaseException, kind: str, words: str) -> None:
    explained = explain(error)
    assert explained.kind == kind
    assert words in str(explained)
    assert "secret detail" not in str(explained)


# --- caches and metrics ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_expire() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(ttl=10, max_entries=5, clock=clock)
    assert cache.add("a", 1)
    assert not cache.add("a", 2)
    clock.now = 9.9
    assert cache.get("a") == 1
    clock.now = 10.0
    assert cache.get("a") is None
    assert cache.add("a", 3)


def test_cache_is_bounded_dropping_the_oldest() -> None:
    cache: TTLCache[int, int] = TTLCache(ttl=100, max_entries=3, clock=Clock())
    for key in range(10):
        cache.set(key, key)
    assert len(cache) == 3
    assert [key in cache for key in (6, 7, 8, 9)] == [False, True, True, True]


def test_cache_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="positive ttl"):
        TTLCache(ttl=0, max_entries=1)


def test_metrics_live_in_their_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.event("app_mention", "recorded")
    first.conversations.labels(outcome="created").inc()
    assert first.value("peerbot_dispatcher_events_total", type="app_mention", outcome="recorded") == 1
    assert second.value("peerbot_dispatcher_events_total", type="app_mention", outcome="recorded") == 0
    text = first.render().decode()
    for name in (
        "peerbot_dispatcher_events_total",
        "peerbot_dispatcher_ack_seconds",
        "peerbot_dispatcher_rate_limit_hits_total",
        "peerbot_dispatcher_conversation_writes_total",
        "peerbot_dispatcher_errors_total",
    ):
        assert name in text
