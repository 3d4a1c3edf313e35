"""The warm-pool claim protocol, shared by the operator (which claims) and the idle worker (which is claimed).

``docs/warm-workers.md`` tells the whole design. In short: the operator keeps idle worker pods labelled
``peerbot.ai/pool=idle``; a turn claims one with a conditional update of the pod (a JSON patch whose first
operation tests that label), and only then POSTs the turn's pointers to the pod's claim endpoint with the
pod's own bearer token. The pod spec carries only the token's SHA-256 (:func:`token_digest`), so reading
pod specs never lets anyone claim a pod.

This module holds what both sides must agree on, and nothing that imports either side: label and
annotation names, the endpoint paths, the environment variables of an idle pod, the request body and
the token check.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from peerbot import constants

#: The pool label: ``idle`` (claimable), ``claimed`` (serving one turn), ``retiring`` (being removed by the
#: pool manager) or ``failed`` (a hand-off that did not happen; being removed).
LABEL_POOL: Final = f"{constants.LABEL_PREFIX}/pool"
POOL_IDLE: Final = "idle"
POOL_CLAIMED: Final = "claimed"
POOL_RETIRING: Final = "retiring"
POOL_FAILED: Final = "failed"
#: On a claimed pod: the turn's name (``<conversation>-t<turn>[-a<attempt>]``), which the planner knows as
#: the turn's Job name, and when the claim happened (the turn's start, for durations and status).
ANNOTATION_JOB: Final = f"{constants.LABEL_PREFIX}/job"
ANNOTATION_CLAIMED_AT: Final = f"{constants.LABEL_PREFIX}/claimed-at"
#: On every pool pod: when it was created by the pool (kept so the annotations map always exists, which
#: lets the claim add keys to it with JSON patch ``add`` operations).
ANNOTATION_POOLED_AT: Final = f"{constants.LABEL_PREFIX}/pooled-at"

#: The idle worker's endpoints.
CLAIM_PATH: Final = "/claim"
READY_PATH: Final = "/ready"
#: The claim port in the pod (``worker.pool.port``); the NetworkPolicy opens it to the operator only.
DEFAULT_CLAIM_PORT: Final = 8090
#: The container port's name in the idle pod spec (the readiness probe refers to it).
CLAIM_PORT_NAME: Final = "claim"

#: Environment variables of an idle pod (``worker/idle.py`` reads them as :class:`IdleSettings`).
ENV_TOKEN_DIGEST: Final = "PEERBOT_CLAIM_TOKEN_SHA256"  # noqa: S105 (a variable name, not a secret)
ENV_IDLE_PORT: Final = "PEERBOT_IDLE_PORT"
ENV_IDLE_HOST: Final = "PEERBOT_IDLE_HOST"
ENV_IDLE_TIMEOUT: Final = "PEERBOT_IDLE_TIMEOUT_SECONDS"

#: 32 random bytes: the token is never guessable, and single use.
TOKEN_BYTES: Final = 32
#: The pointers a claim carries: exactly the environment variables with which a cold Job tells its worker
#: about its turn (``operator/jobs.py``; ``tests/unit/test_warm_pool.py`` keeps the three lists equal).
#: Nothing else is accepted: a claim cannot set the worker's settings, secrets or result file.
POINTERS: Final = frozenset(
    {
        "PEERBOT_CONVERSATION",
        "PEERBOT_TURN",
        "PEERBOT_TEAM",
        "PEERBOT_CHANNEL",
        "PEERBOT_THREAD_TS",
        "PEERBOT_USER",
        "PEERBOT_REQUESTED_TS",
        "PEERBOT_ANSWERED_TS",
        "PEERBOT_REPOSITORY",
        "PEERBOT_STATUS_MESSAGE_TS",
        "PEERBOT_DEADLINE",
        "SESSION_TIMEOUT_MINUTES",
    }
)
#: A claim body is a few hundred bytes; anything much larger is not a claim.
MAX_CLAIM_BYTES: Final = 16 * 1024


def new_token() -> str:
    """A fresh claim token (kept only in the operator's memory)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The SHA-256 of a token, in hex: what the pod spec carries."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str, digest: str) -> bool:
    """Whether ``presented`` is the token whose digest is ``digest`` (constant-time comparison)."""
    return bool(digest) and hmac.compare_digest(token_digest(presented), digest)


class ClaimRequest(BaseModel):
    """The body of ``POST /claim``: which turn (its name) and its pointers (environment variable names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim: str = Field(min_length=1, max_length=constants.KUBERNETES_NAME_LIMIT)
    pointers: dict[str, str]

    @field_validator("pointers")
    @classmethod
    def _only_pointers(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in value if name not in POINTERS)
        if bad:
            raise ValueError(f"not turn pointers: {', '.join(bad)}")
        return value


__all__ = [
    "ANNOTATION_CLAIMED_AT",
    "ANNOTATION_JOB",
    "ANNOTATION_POOLED_AT",
    "CLAIM_PATH",
    "CLAIM_PORT_NAME",
    "DEFAULT_CLAIM_PORT",
    "ENV_IDLE_HOST",
    "ENV_IDLE_PORT",
    "ENV_IDLE_TIMEOUT",
    "ENV_TOKEN_DIGEST",
    "LABEL_POOL",
    "MAX_CLAIM_BYTES",
    "POOL_CLAIMED",
    "POOL_FAILED",
    "POOL_IDLE",
    "POOL_RETIRING",
    "READY_PATH",
    "ClaimRequest",
    "new_token",
    "token_digest",
    "token_matches",
]
