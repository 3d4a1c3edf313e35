"""Writing requests onto Conversations, idempotently, with the async Kubernetes client.

Exactly once per request, however often Slack retries and however many replicas receive it:

- the Conversation's name is deterministic (:func:`peerbot.naming.conversation_name`), and creating one
  that exists answers 409, so a thread never gets two;
- a follow-up moves ``spec.requestedTs`` forward only, with a JSON patch whose first operation *tests*
  the value just read: of two writers racing, one patch applies and the other gets 422 and re-reads,
  finds its message no newer than what is recorded, and stops (:attr:`WriteOutcome.UNCHANGED`).

Only the writer that got ``CREATED`` or ``UPDATED`` posts the status message and the reactions.

The dispatcher needs only the five calls of :class:`ConversationBackend`; ``peerbot local`` satisfies them
with Conversations in a folder (:mod:`peerbot.local.store`), applying the very patches built here
(:func:`new_conversation`, :func:`follow_up_patch`, :func:`status_message_patch`, :func:`cancel_patch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from peerbot import constants
from peerbot.conversation import ConversationSpec, Phase
from peerbot.dispatcher.rules import FileRef
from peerbot.naming import label_value
from peerbot.planner import IDLE_PHASES, ts_value

#: Files shared with requests not yet answered, as ``{message ts: [file refs]}`` JSON: the spec holds only
#: the fixed pointers, so file references ride in this annotation for the worker.
FILES_ANNOTATION: Final = f"{constants.LABEL_PREFIX}/files"
#: Who wrote the Conversation (``kubectl get conversations -l app.kubernetes.io/managed-by=...``).
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "peerbot-dispatcher"
#: A follow-up patch that loses a race re-reads and tries again; more than a few losses in a row means the
#: object is changing faster than we can write it, which is an error to report, not to spin on.
MAX_CONFLICT_RETRIES: Final = 5
#: Pending file references kept per Conversation (an annotation is limited to 256 KiB in total).
MAX_PENDING_FILE_MESSAGES: Final = 50
#: Per-call socket timeout; the caller's overall deadline (RECORD_TIMEOUT_SECONDS) is the real bound.
REQUEST_TIMEOUT_SECONDS: Final = 5.0

#: Not a name conversation_name() ever makes (those are ``team-channel-seconds-micros`` or ``c-<digest>``).
READINESS_PROBE_NAME: Final = "peerbot-readiness-probe"

JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"


class WriteOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"  # the message is not newer than what is recorded: a duplicate or a lost race


@dataclass(frozen=True)
class Recorded:
    """The result of recording a request: what happened, and the Conversation as it now stands."""

    outcome: WriteOutcome
    conversation: dict[str, Any]

    @property
    def won(self) -> bool:
        """True for the one writer that should tell the thread (post the status message, react)."""
        return self.outcome is not WriteOutcome.UNCHANGED


@dataclass(frozen=True)
class RequestRecord:
    """A request to record: which Conversation, and the spec it should hold."""

    name: str
    spec: ConversationSpec
    files: tuple[FileRef, ...] = field(default=())


class StoreError(Exception):
    """A write or read failed. ``kind`` is a metric label; the message is fit to show a person."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def explain(error: BaseException) -> StoreError:
    """Turn a client error into a :class:`StoreError` that says what happened in plain words."""
    if isinstance(error, StoreError):
        return error
    if isinstance(error, ApiException):
        status = error.status or 0
        if status in (401, 403):
            return StoreError(
                "kubernetes_forbidden",
                "the dispatcher is not allowed to write Conversations (check its Role and RoleBinding)",
            )
        if status == 404:
            return StoreError(
                "kubernetes_not_found", "the Conversation resource is not installed in this cluster (CRD)"
            )
        if status == 422:
            return StoreError(
                "kubernetes_invalid", f"the Kubernetes API refused the record ({_reason(error)})"
            )
        if status == 429 or status >= 500:
            return StoreError("kubernetes_unavailable", f"the Kubernetes API is busy or failing ({status})")
        return StoreError("kubernetes", f"the Kubernetes API answered {status} ({_reason(error)})")
    if isinstance(error, TimeoutError):
        return StoreError("kubernetes_timeout", "the Kubernetes API did not answer in time")
    if isinstance(error, aiohttp.ClientError | OSError):
        return StoreError("kubernetes_unreachable", "the Kubernetes API is unreachable")
    # Anything else is a bug of ours: the details go to the log, not to Slack.
    return StoreError("internal", f"an unexpected error in the dispatcher ({type(error).__name__})")


def _reason(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return str(error.reason or "")
    return str(body.get("message") or error.reason or "")[:300]


def is_working(conversation: Mapping[str, Any]) -> bool:
    """True while a turn runs or a request waits to start: what ``stop`` can still cancel."""
    status = conversation.get("status") or {}
    spec = conversation.get("spec") or {}
    phase = status.get("phase")
    if phase in (Phase.RUNNING, Phase.QUEUED) or phase is None or phase == Phase.PENDING:
        return True
    handled = max(ts_value(status.get("answeredTs")), ts_value(status.get("attemptedTs")))
    return phase in IDLE_PHASES and ts_value(spec.get("requestedTs")) > handled


def cancel_pending(conversation: Mapping[str, Any]) -> bool:
    """True when a cancel was asked and the operator has not carried it out yet."""
    spec = conversation.get("spec") or {}
    status = conversation.get("status") or {}
    asked = _time(spec.get("cancelRequestedAt"))
    done = _time(status.get("cancelledAt"))
    return asked is not None and (done is None or done < asked)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _pointer(key: str) -> str:
    """A JSON pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _pending_files(
    annotations: Mapping[str, str], answered_ts: str | None, files: tuple[FileRef, ...], ts: str
) -> str | None:
    """The files annotation after adding ``files`` for message ``ts``, dropping answered messages."""
    try:
        pending = json.loads(annotations.get(FILES_ANNOTATION) or "{}")
    except ValueError:
        pending = {}
    if not isinstance(pending, dict):
        pending = {}
    answered = ts_value(answered_ts)
    kept = {key: value for key, value in pending.items() if ts_value(key) > answered}
    if files:
        kept[ts] = [ref.to_json() for ref in files]
    newest = sorted(kept, key=ts_value)[-MAX_PENDING_FILE_MESSAGES:]
    kept = {key: kept[key] for key in newest}
    return json.dumps(kept, separators=(",", ":"), sort_keys=True) if kept else None


class ConversationBackend(Protocol):
    """What the dispatcher needs from wherever Conversations live (the Kubernetes API, or a folder).

    Every implementation keeps the same promises: ``record`` is idempotent and moves ``requestedTs``
    forward only; ``set_status_message`` writes nothing once a newer request is recorded. Errors are
    the backend's own exceptions or :class:`StoreError` (:func:`explain` turns either into words).
    """

    async def get(self, name: str) -> dict[str, Any] | None:
        """The Conversation, or ``None`` when there is none."""
        ...

    async def ping(self) -> None:
        """Raise unless Conversations can be read (readiness)."""
        ...

    async def record(self, request: RequestRecord, known: Mapping[str, Any] | None = None) -> Recorded:
        """Create the thread's Conversation, or move its ``requestedTs`` forward to this request."""
        ...

    async def set_status_message(self, name: str, requested_ts: str, message_ts: str) -> bool:
        """Point the Conversation at the status message of ``requested_ts``; ``False`` if it moved on."""
        ...

    async def request_cancel(self, name: str, at: datetime) -> dict[str, Any]:
        """Set ``spec.cancelRequestedAt``; returns the Conversation as it now stands."""
        ...


def new_conversation(request: RequestRecord) -> dict[str, Any]:
    """The Conversation object that records a thread's first request (labels, files annotation, spec)."""
    spec = request.spec
    metadata: dict[str, Any] = {
        "name": request.name,
        "labels": {
            constants.LABEL_TEAM: label_value(spec.team),
            constants.LABEL_CHANNEL: label_value(spec.channel),
            constants.LABEL_USER: label_value(spec.user),
            MANAGED_BY_LABEL: MANAGED_BY,
        },
    }
    files = _pending_files({}, None, request.files, spec.requested_ts)
    if files:
        metadata["annotations"] = {FILES_ANNOTATION: files}
    return {
        "apiVersion": f"{constants.API_GROUP}/{constants.API_VERSION}",
        "kind": constants.CONVERSATION_KIND,
        "metadata": metadata,
        "spec": spec.to_api(),
    }


def follow_up_patch(current: Mapping[str, Any], request: RequestRecord) -> list[dict[str, Any]] | None:
    """The JSON patch (RFC 6902) moving ``current`` to this request, or ``None`` when it is not newer.

    Its first operation *tests* the ``requestedTs`` just read, so of two racing writers only one applies.
    """
    spec = current.get("spec") or {}
    recorded = spec.get("requestedTs")
    wanted = request.spec.requested_ts
    if ts_value(wanted) <= ts_value(recorded):
        return None
    ops: list[dict[str, Any]] = [
        # The guard: only the writer that read this exact value may move it.
        {"op": "test", "path": "/spec/requestedTs", "value": recorded},
        {"op": "replace", "path": "/spec/requestedTs", "value": wanted},
    ]
    if request.spec.repository and request.spec.repository != spec.get("repository"):
        ops.append({"op": "add", "path": "/spec/repository", "value": request.spec.repository})
    if spec.get("statusMessageTs"):
        # The previous turn's status message is finished; a worker started before the new one is
        # posted must not take it over.
        ops.append({"op": "remove", "path": "/spec/statusMessageTs"})
    metadata = current.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    answered = (current.get("status") or {}).get("answeredTs")
    files = _pending_files(annotations, answered, request.files, wanted)
    if files != annotations.get(FILES_ANNOTATION):
        if "annotations" not in metadata:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {FILES_ANNOTATION: files}})
        elif files is None:
            ops.append({"op": "remove", "path": f"/metadata/annotations/{_pointer(FILES_ANNOTATION)}"})
        else:
            ops.append(
                {
                    "op": "add",
                    "path": f"/metadata/annotations/{_pointer(FILES_ANNOTATION)}",
                    "value": files,
                }
            )
    return ops


def status_message_patch(requested_ts: str, message_ts: str) -> list[dict[str, Any]]:
    """The JSON patch pointing the Conversation at a status message while ``requested_ts`` is the newest."""
    return [
        {"op": "test", "path": "/spec/requestedTs", "value": requested_ts},
        {"op": "add", "path": "/spec/statusMessageTs", "value": message_ts},
    ]


def cancel_patch(at: datetime) -> dict[str, Any]:
    """The merge patch (RFC 7386) asking for a cancel at ``at`` (RFC 3339, UTC)."""
    stamp = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"spec": {"cancelRequestedAt": stamp}}


class ConversationStore:
    """Conversations in one namespace, through ``kubernetes_asyncio``'s CustomObjectsApi."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def _args(self) -> dict[str, Any]:
        return {
            "group": constants.API_GROUP,
            "version": constants.API_VERSION,
            "namespace": self.namespace,
            "plural": constants.CONVERSATION_PLURAL,
        }

    async def get(self, name: str) -> dict[str, Any] | None:
        """The Conversation, or ``None`` when there is none."""
        try:
            found = await self.api.get_namespaced_custom_object(
                name=name, **self._args(), _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found)

    async def ping(self) -> None:
        """Raise unless the API answers a read of Conversations (readiness).

        Reads one name no thread can have: "not found" proves the API is reachable, the resource
        installed and ``get`` allowed, with no more than the dispatcher's Role grants (no ``list``).
        """
        await self.get(READINESS_PROBE_NAME)

    async def _patch(self, name: str, body: Any, content_type: str) -> dict[str, Any]:
        # The stubs omit _content_type, which the client accepts; the patch flavour must be explicit.
        patched = await self.api.patch_namespaced_custom_object(  # type: ignore[call-arg]
            name=name,
            body=body,
            **self._args(),
            _content_type=content_type,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        return dict(patched)

    def _new_object(self, request: RequestRecord) -> dict[str, Any]:
        return new_conversation(request)

    async def record(self, request: RequestRecord, known: Mapping[str, Any] | None = None) -> Recorded:
        """Create the thread's Conversation, or move its ``requestedTs`` forward to this request.

        Idempotent: recording the same message twice (or an older one) changes nothing and answers
        ``UNCHANGED``. ``known`` is the Conversation as just read, if the caller has it (saves a create
        that would answer 409). Raises the client's errors (see :func:`explain`).
        """
        create = known is None
        current: Mapping[str, Any] | None = known
        for _ in range(MAX_CONFLICT_RETRIES):
            if create:
                try:
                    created = await self.api.create_namespaced_custom_object(
                        body=self._new_object(request),
                        **self._args(),
                        _request_timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                    return Recorded(WriteOutcome.CREATED, dict(created))
                except ApiException as error:
                    if error.status != 409:
                        raise
            if current is None:
                current = await self.get(request.name)
            create = current is None  # deleted since the 409 (retention): start afresh
            if current is None:
                continue
            patch = self._follow_up_patch(current, request)
            if patch is None:
                return Recorded(WriteOutcome.UNCHANGED, dict(current))
            try:
                return Recorded(WriteOutcome.UPDATED, await self._patch(request.name, patch, JSON_PATCH))
            except ApiException as error:
                if error.status not in (404, 409, 422):
                    raise
            current = None
        raise StoreError(
            "kubernetes_conflict",
            "the thread's record kept changing while I was writing to it",
        )

    def _follow_up_patch(
        self, current: Mapping[str, Any], request: RequestRecord
    ) -> list[dict[str, Any]] | None:
        return follow_up_patch(current, request)

    async def set_status_message(self, name: str, requested_ts: str, message_ts: str) -> bool:
        """Point the Conversation at the status message posted for ``requested_ts``.

        ``False`` (and nothing written) when a newer request has been recorded meanwhile: its own
        status message wins.
        """
        try:
            await self._patch(name, status_message_patch(requested_ts, message_ts), JSON_PATCH)
        except ApiException as error:
            if error.status in (404, 409, 422):
                return False
            raise
        return True

    async def request_cancel(self, name: str, at: datetime) -> dict[str, Any]:
        """Ask the operator to cancel: set ``spec.cancelRequestedAt`` (RFC 3339, UTC)."""
        return await self._patch(name, cancel_patch(at), MERGE_PATCH)
