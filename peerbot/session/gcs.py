"""Sessions in Google Cloud Storage (production), with ``google-cloud-storage``'s sync client.

Conditional writes map one to one onto GCS: every upload carries ``if_generation_match`` (``0`` for "must
not exist"), and GCS answers 412 Precondition Failed when the object's generation differs.

Retries: this module adds none of its own. The client retries uploads, downloads, listings and deletes
on 429, 5xx and connection errors with exponential backoff (``DEFAULT_RETRY``). An upload is safe to
retry because it always carries a generation precondition: a resend can never overwrite a newer write.
If a first attempt landed but its answer was lost, the resend gets 412 against our own write; the store
recognises that case (the head's random ``commitId``, a segment's identical bytes) and counts the write
as done instead of reporting a conflict.

Every object is small (a head is a few kilobytes, a segment a slice of history), so uploads go as one
multipart request, below the client's 8 MiB resumable threshold. (fake-gcs-server, the test stand-in, is
known to let preconditions slip on large resumable uploads; nothing here depends on those.)

``STORAGE_EMULATOR_HOST``: pass it as ``emulator_host`` to :func:`make_client` (settings pass values in;
nothing here reads the environment), or hand the store a client of your own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final

from google.api_core import exceptions as gcs_errors
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from peerbot.session.store import (
    DEFAULT_PREFIX,
    ObjectBackend,
    PreconditionFailedError,
    SessionStore,
    StoredObject,
)

#: Parallel downloads when a load needs several segments: GCS answers each in tens of milliseconds, and a
#: session has at most a couple of dozen segments.
READ_PARALLELISM: Final = 8
CONTENT_TYPE: Final = "application/json"
#: The project an emulator client claims; fake-gcs-server accepts any.
EMULATOR_PROJECT: Final = "peerbot-local"


def make_client(emulator_host: str | None = None, project: str | None = None) -> Any:
    """A ``google.cloud.storage.Client``: for an emulator at ``emulator_host`` (``http://host:port``,
    anonymous credentials), else with Application Default Credentials (workload identity in GKE)."""
    if emulator_host:
        return storage.Client(
            project=project or EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=emulator_host),
        )
    return storage.Client(project=project)


class GcsObjects(ObjectBackend):
    """Objects in one GCS bucket, through an existing client."""

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

    def location(self, name: str) -> str:
        return f"gs://{self.bucket.name}/{name}"

    def read(self, name: str) -> StoredObject | None:
        blob = self.bucket.blob(name)
        try:
            data = blob.download_as_bytes()
        except gcs_errors.NotFound:
            return None
        # The download answers with x-goog-generation, which the client stores on the blob: bytes and
        # generation come from the same response, so they always belong to the same object version.
        if blob.generation is None:
            raise RuntimeError(
                f"{self.location(name)}: the download did not say which generation it returned"
            )
        return StoredObject(data=data, generation=int(blob.generation))

    def read_many(self, names: Sequence[str]) -> list[StoredObject | None]:
        if len(names) <= 1:
            return [self.read(name) for name in names]
        with ThreadPoolExecutor(max_workers=min(READ_PARALLELISM, len(names))) as pool:
            return list(pool.map(self.read, names))

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        blob = self.bucket.blob(name)
        try:
            blob.upload_from_string(data, content_type=CONTENT_TYPE, if_generation_match=if_generation_match)
        except gcs_errors.PreconditionFailed as error:
            raise PreconditionFailedError(f"{self.location(name)}: {error.message}") from None
        return int(blob.generation)

    def delete(self, name: str) -> None:
        with contextlib.suppress(gcs_errors.NotFound):
            self.bucket.blob(name).delete()

    def list_names(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.bucket.client.list_blobs(self.bucket, prefix=prefix)]


class GcsSessionStore(SessionStore):
    """A :class:`SessionStore` in a GCS bucket (``GCS_BUCKET_NAME``).

    Args:
        bucket: the bucket name, or a ``google.cloud.storage.Bucket``.
        client: the client to use with a bucket name (default: :func:`make_client` with ADC).
        prefix: object-name prefix for sessions (``sessions``).
        clock: the time source for timestamps in the session (tests pin it).
    """

    def __init__(
        self,
        bucket: str | Any,
        *,
        client: Any | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if isinstance(bucket, str):
            bucket = (client or make_client()).bucket(bucket)
        super().__init__(GcsObjects(bucket), prefix=prefix, clock=clock)
