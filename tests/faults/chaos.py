"""Fault injection for the fault suite: the Kubernetes API failing or the operator dying, and the kubelet.

:class:`ApiFaults` sits in the Kubernetes stand-in as a kmock reaction (the stand-in's documented hook for
scripted answers: ``standin.emulator[criterion] << response``). It decides per request, on the stand-in's
own thread, whether the request fails, so the real clients (kopf's, ``kubernetes_asyncio``) see exactly
what a real API server in trouble sends: a ``Status`` body with the code and reason, on the wire.

- :meth:`ApiFaults.burst`: the next N matching requests fail with 500, 503, 409 or 429.
- :meth:`ApiFaults.die_after_writes`: the operator "dies" right after its k-th write reached the server:
  every later write is refused until :meth:`ApiFaults.revive`, so whatever the dying process still tries
  has no effect on the world, as if it had been killed at that instant. The test then starts a new one.

:class:`Kubelet` plays the Job controller and the kubelet for worker Jobs: it starts a Job's pod, remembers
the newest message in the thread when the worker "read" it, and finishes the Job with the worker's result
document answering up to that message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final

import kmock

from peerbot.result import Outcome, TurnResult
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn

#: What a real API server says for each injected code (reason, message), as a ``Status`` object.
STATUS: Final[dict[int, tuple[str, str]]] = {
    500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    409: (
        "Conflict",
        "Operation cannot be fulfilled: the object has been modified; please apply your "
        "changes to the latest version and try again",
    ),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
}
WRITES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Decisions are remembered per request (kmock may ask the criterion more than once for one request).
_REMEMBERED: Final = 10_000


def status_body(code: int) -> dict[str, Any]:
    reason, message = STATUS[code]
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class _Burst:
    code: int
    left: int
    methods: Collection[str]
    path: str | None


@dataclass
class ApiFaults:
    """Failures of the Kubernetes API server, injected request by request (see the module docstring)."""

    standin: KubernetesStandIn
    injected: dict[int, int] = field(default_factory=dict)
    writes: int = 0
    died: threading.Event = field(default_factory=threading.Event)
    _bursts: list[_Burst] = field(default_factory=list)
    _die_after: int | None = None
    _decided: dict[int, tuple[Any, int | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> ApiFaults:
        """Add the reactions to the stand-in (once, before any client connects)."""
        for code in STATUS:
            body = status_body(code)
            headers = {"Retry-After": "1"} if code == 429 else {}
            answer = kmock.Response(status=code, payload=body, headers=headers)  # type: ignore[attr-defined]
            self.standin.emulator[self._criterion(code)] << answer  # kmock's DSL: adds a reaction
        return self

    # --- what the test arms

    def burst(
        self, code: int, count: int, *, methods: Collection[str] = WRITES, path: str | None = None
    ) -> None:
        """The next ``count`` requests with one of ``methods`` (and ``path`` in their path) get ``code``."""
        if code not in STATUS:
            raise ValueError(f"no injectable answer for {code}: use one of {sorted(STATUS)}")
        with self._lock:
            self._bursts.append(_Burst(code, count, frozenset(methods), path))

    def die_after_writes(self, count: int) -> None:
        """Let ``count`` more writes through, then refuse every write (503) until :meth:`revive`."""
        with self._lock:
            self._die_after = self.writes + count
            self.died.clear()

    def revive(self) -> None:
        with self._lock:
            self._die_after = None
            self.died.clear()

    @property
    def dead(self) -> bool:
        return self.died.is_set()

    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    # --- what runs on the stand-in's thread, per request

    def _criterion(self, code: int) -> Callable[[Any], bool]:
        def matches(request: Any) -> bool:
            return self._decide(request) == code

        return matches

    def _decide(self, request: Any) -> int | None:
        key = id(request)
        with self._lock:
            remembered = self._decided.get(key)
            if remembered is not None and remembered[0] is request:
                return remembered[1]
            decision = self._fresh_decision(request)
            if len(self._decided) >= _REMEMBERED:
                self._decided.clear()
            self._decided[key] = (request, decision)
            if decision is not None:
                self.injected[decision] = self.injected.get(decision, 0) + 1
            return decision

    def _fresh_decision(self, request: Any) -> int | None:
        method = str(getattr(request.method, "value", request.method)).upper()
        path = str(request.url.path) if getattr(request, "url", None) is not None else ""
        if method == "GET" and str(request.params.get("watch", "")).lower() in ("1", "true"):
            return None  # watches are never failed: kopf reconnects them on its own schedule
        write = method in WRITES
        if write and self._die_after is not None and self.writes >= self._die_after:
            self.died.set()
            return 503
        if write:
            self.writes += 1
        for burst in self._bursts:
            if burst.left > 0 and method in burst.methods and (burst.path is None or burst.path in path):
                burst.left -= 1
                if write:
                    self.writes -= 1  # a refused write changed nothing
                return burst.code
        return None


class Kubelet:
    """Plays the Job controller and the kubelet for the worker Jobs of one namespace."""

    def __init__(self, kube: KubernetesStandIn, slack: SlackStandIn, namespace: str = "default") -> None:
        self.kube = kube
        self.slack = slack
        self.namespace = namespace
        #: Per Job: the newest message of the thread when its worker read it.
        self.saw: dict[str, str] = {}

    def start(self, job: str, channel: str, thread_ts: str) -> str:
        """The pod runs; its worker reads the thread now. Returns the newest message it saw."""
        self.kube.start_job(self.namespace, job)
        newest = max(
            (m.ts for m in self.slack.thread(channel, thread_ts) if m.user != self.slack.bot_user_id),
            key=float,
        )
        self.saw[job] = newest
        return newest

    def finish(self, job: str, answered: str | None = None) -> None:
        """The worker answers up to what it saw (or ``answered``) and exits 0."""
        document = TurnResult(outcome=Outcome.DONE, answeredTs=answered or self.saw[job]).to_document()
        self.kube.finish_job(self.namespace, job, termination_message=document)
