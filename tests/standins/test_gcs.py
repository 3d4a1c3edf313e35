"""The GCS stand-in is as strict as GCS where the session store relies on it, with the real client.

Real behaviour (https://cloud.google.com/storage/docs/request-preconditions): an ``ifGenerationMatch``
that does not match the object's generation fails with 412 Precondition Failed; ``0`` means "only if no
live object exists". Each test below would fail if the stand-in accepted what GCS rejects.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from google.api_core import exceptions as gcs_errors
from google.cloud import storage

from peerbot.testing.gcs import GcsStandIn

#: The sizes the session store uploads: a head is ~2 KB; a merged segment can reach a few MiB. Both go
#: as single multipart uploads (the client switches to resumable uploads above 8 MiB).
HEAD_SIZE = 2 * 1024
SEGMENT_SIZE = 3 * 1024 * 1024


def _upload(bucket: Any, name: str, data: bytes, generation: int) -> int:
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
    return int(blob.generation)


@pytest.mark.parametrize("size", [HEAD_SIZE, SEGMENT_SIZE])
def test_stale_generation_upload_is_refused_with_412(gcs_bucket: Any, size: int) -> None:
    first = _upload(gcs_bucket, "o", b"a" * size, 0)
    second = _upload(gcs_bucket, "o", b"b" * size, first)
    with pytest.raises(gcs_errors.PreconditionFailed) as error:
        _upload(gcs_bucket, "o", b"c" * size, first)
    assert error.value.code == 412
    assert gcs_bucket.blob("o").download_as_bytes() == b"b" * size  # not overwritten
    assert gcs_bucket.get_blob("o").generation == second


@pytest.mark.parametrize("size", [HEAD_SIZE, SEGMENT_SIZE])
def test_generation_zero_on_an_existing_object_is_refused_with_412(gcs_bucket: Any, size: int) -> None:
    _upload(gcs_bucket, "o", b"a" * size, 0)
    with pytest.raises(gcs_errors.PreconditionFailed):
        _upload(gcs_bucket, "o", b"b" * size, 0)
    assert gcs_bucket.blob("o").download_as_bytes() == b"a" * size


def test_a_generation_on_a_missing_object_is_refused_with_412(gcs_bucket: Any) -> None:
    with pytest.raises(gcs_errors.PreconditionFailed):
        _upload(gcs_bucket, "never-written", b"x", 1234)
    assert gcs_bucket.get_blob("never-written") is None


def test_every_write_gets_a_new_larger_generation(gcs_bucket: Any) -> None:
    generations = [_upload(gcs_bucket, "o", b"0", 0)]
    for i in range(1, 5):
        generations.append(_upload(gcs_bucket, "o", str(i).encode(), generations[-1]))
    assert generations == sorted(set(generations))
    assert all(g > 0 for g in generations)


def test_a_recreated_object_never_repeats_an_old_generation(gcs_bucket: Any) -> None:
    old = _upload(gcs_bucket, "o", b"a", 0)
    gcs_bucket.blob("o").delete()
    assert _upload(gcs_bucket, "o", b"b", 0) > old


def test_a_download_says_which_generation_it_returned(gcs_bucket: Any) -> None:
    generation = _upload(gcs_bucket, "o", b"payload", 0)
    blob = gcs_bucket.blob("o")
    assert blob.download_as_bytes() == b"payload"
    assert blob.generation == generation  # from x-goog-generation, as GCS sends it


def test_missing_object_and_missing_bucket_are_404(gcs_standin: GcsStandIn, gcs_bucket: Any) -> None:
    with pytest.raises(gcs_errors.NotFound):
        gcs_bucket.blob("absent").download_as_bytes()
    with pytest.raises(gcs_errors.NotFound):
        gcs_bucket.blob("absent").delete()
    with pytest.raises(gcs_errors.NotFound):
        _upload(gcs_standin.client().bucket("no-such-bucket-here"), "o", b"x", 0)


def test_listing_is_by_prefix_and_sees_writes_at_once(gcs_bucket: Any) -> None:
    for name in ("a/1", "a/2", "ab/3", "b/4"):
        _upload(gcs_bucket, name, b"x", 0)
    names = [blob.name for blob in gcs_bucket.client.list_blobs(gcs_bucket, prefix="a/")]
    assert names == ["a/1", "a/2"]


def test_buckets_separate_tests(gcs_standin: GcsStandIn) -> None:
    first, second = gcs_standin.create_bucket(), gcs_standin.create_bucket()
    _upload(first, "o", b"x", 0)
    assert second.get_blob("o") is None


def test_storage_emulator_host_points_the_stock_client_here(
    gcs_standin: GcsStandIn, gcs_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in gcs_standin.environment().items():
        monkeypatch.setenv(name, value)
    client = storage.Client()  # what a worker process does with STORAGE_EMULATOR_HOST set
    client.bucket(gcs_bucket.name).blob("o").upload_from_string(b"via env")
    assert gcs_bucket.blob("o").download_as_bytes() == b"via env"


def test_start_is_fast_and_stop_kills_the_process_and_frees_the_port() -> None:
    started = time.monotonic()
    standin = GcsStandIn()
    standin.start()
    assert time.monotonic() - started < 5
    process = standin._process
    port = int(standin.url.rsplit(":", 1)[1])
    was_running = standin.running
    standin.stop()
    assert was_running
    assert process is not None
    assert process.poll() is not None
    assert not standin.running
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(RuntimeError, match="not running"):
        _ = standin.url
    standin.stop()  # stopping twice is harmless


def test_context_manager_and_restart_start_empty() -> None:
    with GcsStandIn() as standin:
        bucket = standin.create_bucket("kept-only-in-memory")
        _upload(bucket, "o", b"x", 0)
    with GcsStandIn() as standin:
        names = [b.name for b in standin.client().list_buckets()]
        assert "kept-only-in-memory" not in names
