"""The Kubernetes stand-in is as strict as a real API server, checked with the real clients and kubectl.

Each test pins one behaviour of kube-apiserver that Peerbot's code (or kopf) relies on; a stand-in that
accepted what the real server rejects, or answered in another shape, would fail it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import pathlib
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final

import kmock
import kubernetes
import kubernetes_asyncio
import pytest
from kubernetes.client import ApiException

from peerbot.testing.kubernetes import (
    APPLY_PATCH,
    JSON_PATCH,
    STRATEGIC_MERGE_PATCH,
    JobPodRejected,
    KubernetesStandIn,
)
from tests.fixtures.kubernetes import CONVERSATION_CRD, Kubectl

NAMESPACE: Final = "default"
GROUP: Final = "peerbot.ai"
VERSION: Final = "v1"
PLURAL: Final = "conversations"
SPEC: Final = {
    "team": "T024BE7LD",
    "channel": "C01ABCDEF",
    "threadTs": "1700000000.123456",
    "user": "U01ABCDEF",
    "requestedTs": "1700000000.123456",
}
#: The generated client declares every model field Optional; tests read the models as a user would.
Api = Any
#: Watches in these tests end as soon as the expected events arrived; this only bounds a broken one.
WATCH_TIMEOUT_SECONDS: Final = 5


def conversation(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "peerbot.ai/v1",
        "kind": "Conversation",
        "metadata": {"name": name},
        "spec": {**SPEC, **spec},
    }


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body or "null")
    return body


@pytest.fixture
def custom(kubernetes_api: kubernetes.client.ApiClient) -> Api:
    return kubernetes.client.CustomObjectsApi(kubernetes_api)


@pytest.fixture
def core(kubernetes_api: kubernetes.client.ApiClient) -> Api:
    return kubernetes.client.CoreV1Api(kubernetes_api)


@pytest.fixture
def batch(kubernetes_api: kubernetes.client.ApiClient) -> Api:
    return kubernetes.client.BatchV1Api(kubernetes_api)


@pytest.fixture
def create_conversation(custom: Api) -> Callable[..., dict[str, Any]]:
    def create(name: str, **spec: Any) -> dict[str, Any]:
        created: dict[str, Any] = custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, conversation(name, **spec)
        )
        return created

    return create


def job_manifest(name: str, **pod_spec: Any) -> dict[str, Any]:
    container = {"name": "worker", "image": "ghcr.io/peerbot/worker:1.0", "terminationMessagePolicy": "File"}
    spec = {"restartPolicy": "Never", "containers": [container], **pod_spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": spec}},
    }


def watch_events(
    list_fn: Callable[..., Any], *args: Any, count: int, **kwargs: Any
) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` events of a watch (the real client's Watch), then stop."""
    watching: Any = kubernetes.watch  # the watch helper has no type annotations
    watch = watching.Watch()
    events = []
    for event in watch.stream(list_fn, *args, timeout_seconds=WATCH_TIMEOUT_SECONDS, **kwargs):
        obj = event["object"] if isinstance(event["object"], dict) else event["raw_object"]
        events.append((event["type"], obj))
        if len(events) == count:
            watch.stop()
    return events


# --- object metadata --------------------------------------------------------------------------------------


def test_create_sets_uid_resource_version_creation_timestamp_and_generation(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    created = create_conversation("meta")
    meta = created["metadata"]
    assert len(meta["uid"]) == 36
    assert meta["resourceVersion"].isdigit()
    assert meta["creationTimestamp"].endswith("Z")
    assert len(meta["creationTimestamp"]) == len("2024-01-01T00:00:00Z")
    assert meta["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, "meta", {"status": {"phase": "Queued"}}
    )
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "meta", {"metadata": {"labels": {"a": "b"}}}
    )
    changed = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "meta", {"spec": {"requestedTs": "1700000002.1"}}
    )
    versions = [int(obj["metadata"]["resourceVersion"]) for obj in (created, status, labelled, changed)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 4
    assert [obj["metadata"]["generation"] for obj in (status, labelled, changed)] == [1, 1, 2]
    assert changed["metadata"]["uid"] == meta["uid"]
    assert changed["metadata"]["creationTimestamp"] == meta["creationTimestamp"]


def test_a_no_op_patch_keeps_the_resource_version(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    created = create_conversation("noop")
    same = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "noop", {"spec": {"team": SPEC["team"]}}
    )
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_generate_name_gets_a_random_suffix(core: Api) -> None:
    first = core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"generateName": "worker-"}, "data": {"a": "1"}}
    )
    second = core.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"generateName": "worker-"}, "data": {"a": "1"}}
    )
    for made in (first, second):
        assert made.metadata.name.startswith("worker-")
        assert len(made.metadata.name) == len("worker-") + 5
    assert first.metadata.name != second.metadata.name


def test_creating_a_taken_name_is_409_already_exists(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    create_conversation("twice")
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, conversation("twice"))
    assert caught.value.status == 409
    assert status_of(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'conversations.peerbot.ai "twice" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "twice", "group": "peerbot.ai", "kind": "conversations"},
        "code": 409,
    }


def test_invalid_names_and_labels_are_422(core: Api, custom: Api) -> None:
    with pytest.raises(ApiException) as bad_name:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, conversation("Not_A_Name"))
    with pytest.raises(ApiException) as bad_label:
        core.create_namespaced_config_map(
            NAMESPACE,
            {"metadata": {"name": "labels", "labels": {"peerbot.ai/thread": "1700000000.123456/x"}}},
        )
    with pytest.raises(ApiException) as no_name:
        core.create_namespaced_config_map(NAMESPACE, {"metadata": {}})
    assert (bad_name.value.status, bad_label.value.status, no_name.value.status) == (422, 422, 422)
    assert status_of(bad_name.value)["message"].startswith(
        'Conversation.peerbot.ai "Not_A_Name" is invalid: metadata.name: Invalid value: "Not_A_Name": a '
        "lowercase RFC 1123 subdomain"
    )
    assert status_of(bad_label.value)["details"]["causes"][0]["field"] == "metadata.labels"
    assert status_of(no_name.value)["message"] == (
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
    )


# --- optimistic concurrency -------------------------------------------------------------------------------


def test_stale_resource_version_is_409_conflict_on_put_and_patch(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    stale = create_conversation("racy")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "racy", {"spec": {"requestedTs": "1700000001.1"}}
    )
    stale["spec"]["requestedTs"] = "1700000002.1"
    with pytest.raises(ApiException) as put:
        custom.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "racy", stale)
    version = stale["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as patch:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            "racy",
            {"metadata": {"resourceVersion": version}, "spec": {"requestedTs": "1.2"}},
        )
    for error in (put.value, patch.value):
        assert error.status == 409
        assert status_of(error)["reason"] == "Conflict"
        assert status_of(error)["message"] == (
            'Operation cannot be fulfilled on conversations.peerbot.ai "racy": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
    current = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "racy")
    assert current["spec"]["requestedTs"] == "1700000001.1"


def test_put_of_a_custom_resource_without_resource_version_is_422(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    create_conversation("unconditional")
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "unconditional", conversation("unconditional")
        )
    assert caught.value.status == 422
    assert (
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        in status_of(caught.value)["message"]
    )


def test_failed_json_patch_test_is_422_and_changes_nothing(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    created = create_conversation("tested")
    operations: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "replace", "path": "/spec/requestedTs", "value": "1700000009.9"},
    ]
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "tested", operations, _content_type=JSON_PATCH
        )
    assert caught.value.status == 422
    assert status_of(caught.value)["reason"] == "Invalid"
    assert (
        status_of(caught.value)["message"] == "the server rejected our request due to an error in our request"
    )
    operations[0]["value"] = created["metadata"]["resourceVersion"]
    patched: dict[str, Any] = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "tested", operations, _content_type=JSON_PATCH
    )
    assert patched["spec"]["requestedTs"] == "1700000009.9"


def raw_request(
    standin: KubernetesStandIn, method: str, path: str, body: Any, content_type: str
) -> tuple[int, Any]:
    """One HTTP request as it goes over the wire (for bodies the typed clients refuse to send)."""
    url = urllib.parse.urlsplit(standin.url)
    connection = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port, context=standin.ssl_context(), timeout=WATCH_TIMEOUT_SECONDS
    )
    try:
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {standin.token}"}
        connection.request(method, path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_json_patch_that_is_not_a_list_of_operations_is_400(
    create_conversation: Callable[..., dict[str, Any]], kubernetes_standin: KubernetesStandIn
) -> None:
    create_conversation("malformed")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/malformed"
    code, status = raw_request(kubernetes_standin, "PATCH", path, {"op": "replace"}, JSON_PATCH)
    assert (code, status["reason"]) == (400, "BadRequest")
    code, status = raw_request(kubernetes_standin, "PATCH", path, {"spec": {}}, "application/json")
    assert (code, status["reason"]) == (415, "UnsupportedMediaType")


# --- lists, namespaces, selectors -------------------------------------------------------------------------


def test_lists_carry_kind_api_version_and_resource_version(
    create_conversation: Callable[..., dict[str, Any]],
    custom: Api,
    core: Api,
) -> None:
    create_conversation("listed")
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
    assert (listing["kind"], listing["apiVersion"]) == ("ConversationList", "peerbot.ai/v1")
    assert listing["metadata"]["resourceVersion"].isdigit()
    assert listing["items"][0]["kind"] == "Conversation"
    namespaces = json.loads(core.list_namespace(_preload_content=False).data)
    assert (namespaces["kind"], namespaces["apiVersion"]) == ("NamespaceList", "v1")
    assert {"default", "kube-system", "kube-public"} <= {
        item["metadata"]["name"] for item in namespaces["items"]
    }
    assert all("kind" not in item for item in namespaces["items"]), (
        "built-in list items carry no kind, as on a real server"
    )


def test_limit_and_continue_page_through_a_list(core: Api) -> None:
    for index in range(5):
        core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": f"page-{index}"}})
    first = core.list_namespaced_config_map(NAMESPACE, limit=2)
    second = core.list_namespaced_config_map(NAMESPACE, limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_config_map(NAMESPACE, limit=2, _continue=second.metadata._continue)
    names = [item.metadata.name for page in (first, second, third) for item in page.items]
    assert names == [f"page-{index}" for index in range(5)]
    assert first.metadata.remaining_item_count == 3
    assert not third.metadata._continue


def test_creating_in_a_missing_or_terminating_namespace_is_refused(
    core: Api, kubernetes_standin: KubernetesStandIn
) -> None:
    with pytest.raises(ApiException) as missing:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert missing.value.status == 404
    assert status_of(missing.value)["message"] == 'namespaces "nowhere" not found'
    kubernetes_standin.create_namespace("leaving")
    core.create_namespaced_config_map(
        "leaving", {"metadata": {"name": "held", "finalizers": ["peerbot.ai/test"]}}
    )
    core.delete_namespace("leaving")
    assert core.read_namespace("leaving").status.phase == "Terminating"
    with pytest.raises(ApiException) as terminating:
        core.create_namespaced_config_map("leaving", {"metadata": {"name": "late"}})
    assert terminating.value.status == 403
    assert "because it is being terminated" in status_of(terminating.value)["message"]
    core.patch_namespaced_config_map("held", "leaving", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespace("leaving")
    assert gone.value.status == 404


def test_label_and_field_selectors_filter_lists(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    for name, channel in (("sel-a", "C1"), ("sel-b", "C2"), ("sel-c", "C1")):
        create_conversation(name)
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"metadata": {"labels": {"peerbot.ai/channel": channel}}}
        )

    def names(**selectors: str) -> list[str]:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, **selectors)
        return [item["metadata"]["name"] for item in listing["items"]]

    assert names(label_selector="peerbot.ai/channel=C1") == ["sel-a", "sel-c"]
    assert names(label_selector="peerbot.ai/channel in (C2,C9)") == ["sel-b"]
    assert names(label_selector="peerbot.ai/channel!=C1") == ["sel-b"]
    assert names(label_selector="!peerbot.ai/channel") == []
    assert names(field_selector="metadata.name=sel-b") == ["sel-b"]
    with pytest.raises(ApiException) as unsupported:
        names(field_selector="spec.channel=C01ABCDEF")
    with pytest.raises(ApiException) as malformed:
        names(label_selector="peerbot.ai/channel in C1")
    assert (unsupported.value.status, malformed.value.status) == (400, 400)
    assert status_of(unsupported.value)["message"] == (
        '"spec.channel" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )


# --- watches ----------------------------------------------------------------------------------------------


def test_watch_resumes_after_the_given_resource_version(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    first = create_conversation("watch-1")
    create_conversation("watch-2")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "watch-1", {"spec": {"requestedTs": "2.2"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "watch-2")
    events = watch_events(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        count=3,
        resource_version=first["metadata"]["resourceVersion"],
    )
    assert [(kind, obj["metadata"]["name"]) for kind, obj in events] == [
        ("ADDED", "watch-2"),
        ("MODIFIED", "watch-1"),
        ("DELETED", "watch-2"),
    ]
    assert events[1][1]["spec"]["requestedTs"] == "2.2"


def test_watch_from_a_forgotten_resource_version_is_410_gone() -> None:
    with KubernetesStandIn(crds=[CONVERSATION_CRD], watch_history=3) as standin:
        created = standin.create(PLURAL, conversation("old"), NAMESPACE)
        for index in range(4):
            standin.patch(PLURAL, NAMESPACE, "old", {"spec": {"requestedTs": f"{index}.1"}})
        with kubernetes.client.ApiClient(_configuration(standin)) as client:
            custom = kubernetes.client.CustomObjectsApi(client)
            with pytest.raises(ApiException) as caught:
                watch_events(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    NAMESPACE,
                    PLURAL,
                    count=1,
                    resource_version=created["metadata"]["resourceVersion"],
                )
    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value.reason)


def _configuration(standin: KubernetesStandIn) -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    configuration.host = standin.url
    configuration.ssl_ca_cert = str(standin.ca_path)
    configuration.api_key = {"authorization": f"Bearer {standin.token}"}
    return configuration


def test_label_selected_watch_sees_objects_enter_and_leave_the_selection(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    start = create_conversation("moving")
    for labels in ({"tier": "hot"}, {"tier": "hot", "extra": "1"}, {"tier": "cold"}):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "moving", {"metadata": {"labels": labels}}
        )
    events = watch_events(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        count=3,
        resource_version=start["metadata"]["resourceVersion"],
        label_selector="tier=hot",
    )
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "DELETED"]


async def test_the_async_client_lists_and_watches(
    kubeconfig: pathlib.Path, kubernetes_standin: KubernetesStandIn
) -> None:
    created = kubernetes_standin.create(PLURAL, conversation("async"), NAMESPACE)
    client = await kubernetes_asyncio.config.new_client_from_config(config_file=str(kubeconfig))
    async with client:
        custom = kubernetes_asyncio.client.CustomObjectsApi(client)
        listing = await custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        assert [item["metadata"]["name"] for item in listing["items"]] == ["async"]
        watch = kubernetes_asyncio.watch.Watch()
        changed = asyncio.create_task(
            asyncio.to_thread(
                kubernetes_standin.patch, PLURAL, NAMESPACE, "async", {"spec": {"requestedTs": "3.3"}}
            )
        )
        async with watch.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
        ) as stream:
            async for event in stream:
                assert (event["type"], event["object"]["spec"]["requestedTs"]) == ("MODIFIED", "3.3")
                break
        await changed
        patched = await kubernetes_standin.await_for(
            PLURAL, NAMESPACE, "async", lambda c: c if c and c["spec"]["requestedTs"] == "3.3" else None
        )
        assert patched["metadata"]["generation"] == 2


# --- status subresource, validation, patch types ------------------------------------------------------------


def test_status_subresource_separates_spec_and_status_writes(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    created = create_conversation(
        "split",
    )
    assert "status" not in created
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "split",
        {"spec": {"requestedTs": "5.5"}, "status": {"phase": "Failed"}},
    )
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "split",
        {"spec": {"requestedTs": "6.6"}, "status": {"phase": "Running"}},
    )
    current = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "split")
    assert current["spec"]["requestedTs"] == "5.5"
    assert current["status"] == {"phase": "Running"}


def test_status_in_a_create_body_is_dropped(custom: Api) -> None:
    body = dict(conversation("born"), status={"phase": "Succeeded"})
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    assert "status" not in created


def test_custom_resources_are_validated_against_the_crd_schema(
    custom: Api,
) -> None:
    body = conversation("invalid", team="not-a-team-id")
    del body["spec"]["user"]
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    assert caught.value.status == 422
    status = status_of(caught.value)
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'Conversation.peerbot.ai "invalid" is invalid: [spec.user: Required value, spec.team: Invalid value: '
        "\"not-a-team-id\": spec.team in body should match '^[A-Z0-9]+$']"
    )
    assert {(c["field"], c["reason"]) for c in status["details"]["causes"]} == {
        ("spec.team", "FieldValueInvalid"),
        ("spec.user", "FieldValueRequired"),
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, conversation("valid"))
    with pytest.raises(ApiException) as status_error:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, "valid", {"status": {"phase": "Done"}}
        )
    assert status_error.value.status == 422
    assert (
        'status.phase: Unsupported value: "Done": supported values: "Pending", "Queued"'
        in status_of(status_error.value)["message"]
    )


def test_unknown_fields_are_pruned_with_a_warning_or_refused_when_strict(
    custom: Api, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    lenient = custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, conversation("pruned", prompt="hello")
    )
    assert "prompt" not in lenient["spec"]
    manifest = tmp_path / "strict.json"
    manifest.write_text(json.dumps(conversation("strict", prompt="hello")), encoding="utf-8")
    applied = kubectl("apply", "-f", str(manifest))
    assert applied.returncode != 0
    assert 'strict decoding error: unknown field "spec.prompt"' in applied.stderr
    warned = kubectl("apply", "--validate=warn", "-f", str(manifest))
    assert warned.returncode == 0, warned.stderr
    assert 'unknown field "spec.prompt"' in warned.stderr


def test_strategic_merge_patch_merges_containers_by_name_for_built_ins_only(
    batch: Api,
    custom: Api,
    kubernetes_standin: KubernetesStandIn,
    core: Api,
) -> None:
    kubernetes_standin.create("serviceaccounts", {"metadata": {"name": "worker"}}, NAMESPACE)
    pod = {
        "metadata": {"name": "smp"},
        "spec": {
            "serviceAccountName": "worker",
            "containers": [
                {"name": "worker", "image": "worker:1"},
                {"name": "sidecar", "image": "sidecar:1"},
            ],
        },
    }
    core.create_namespaced_pod(NAMESPACE, pod)
    patched = core.patch_namespaced_pod(
        "smp", NAMESPACE, {"spec": {"containers": [{"name": "sidecar", "image": "sidecar:2"}]}}
    )
    assert [(c.name, c.image) for c in patched.spec.containers] == [
        ("worker", "worker:1"),
        ("sidecar", "sidecar:2"),
    ]
    with pytest.raises(ApiException) as immutable:
        core.patch_namespaced_pod("smp", NAMESPACE, {"spec": {"restartPolicy": "Never"}})
    assert immutable.value.status == 422
    assert "pod updates may not change fields" in status_of(immutable.value)["message"]
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, conversation("nosmp"))
    with pytest.raises(ApiException) as unsupported:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            "nosmp",
            {"spec": {"user": "U2"}},
            _content_type=STRATEGIC_MERGE_PATCH,
        )
    assert unsupported.value.status == 415
    assert status_of(unsupported.value)["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )


# --- deletion ---------------------------------------------------------------------------------------------


def test_finalizers_hold_deletion_until_removed(
    create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    create_conversation("held")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "held", {"metadata": {"finalizers": ["peerbot.ai/cleanup"]}}
    )
    deleting = custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "held")
    assert deleting["metadata"]["deletionTimestamp"]
    current = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "held")
    assert current["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as added:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            "held",
            {"metadata": {"finalizers": ["peerbot.ai/cleanup", "peerbot.ai/more"]}},
        )
    assert added.value.status == 422
    assert (
        "no new finalizers can be added if the object is being deleted" in status_of(added.value)["message"]
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "held", {"metadata": {"finalizers": []}}
    )
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "held")
    assert gone.value.status == 404
    assert status_of(gone.value)["message"] == 'conversations.peerbot.ai "held" not found'


def test_deleting_a_job_orphans_its_pods_unless_asked_and_gc_cascades_on_request(
    batch: Api,
    kubernetes_standin: KubernetesStandIn,
    core: Api,
) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("cascade"))
    batch.create_namespaced_job(NAMESPACE, job_manifest("orphaning"))
    cascade_pod = kubernetes_standin.start_job(NAMESPACE, "cascade")["metadata"]["name"]
    orphan_pod = kubernetes_standin.start_job(NAMESPACE, "orphaning")["metadata"]["name"]
    _, _, headers = batch.delete_namespaced_job_with_http_info("orphaning", NAMESPACE)
    assert "child pods are preserved by default" in headers.get("Warning", "")
    batch.delete_namespaced_job("cascade", NAMESPACE, propagation_policy="Background")
    assert [job.metadata.name for job in batch.list_namespaced_job(NAMESPACE).items] == ["orphaning"]
    assert {pod.metadata.name for pod in core.list_namespaced_pod(NAMESPACE).items} == {
        cascade_pod,
        orphan_pod,
    }
    deleted = kubernetes_standin.collect_garbage()
    assert deleted == [("pods", NAMESPACE, cascade_pod)]
    assert batch.list_namespaced_job(NAMESPACE).items == []
    orphan = core.read_namespaced_pod(orphan_pod, NAMESPACE)
    assert orphan.metadata.owner_references is None


# --- built-in resources -----------------------------------------------------------------------------------


def test_jobs_are_defaulted_validated_and_their_template_is_immutable(
    batch: Api,
) -> None:
    created = batch.create_namespaced_job(NAMESPACE, job_manifest("worker-t1"))
    uid = created.metadata.uid
    assert (created.spec.backoff_limit, created.spec.completions) == (6, 1)
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert created.spec.template.metadata.labels["job-name"] == "worker-t1"
    assert created.spec.template.spec.containers[0].termination_message_path == "/dev/termination-log"
    with pytest.raises(ApiException) as always:
        batch.create_namespaced_job(NAMESPACE, job_manifest("restarting", restartPolicy="Always"))
    assert always.value.status == 422
    assert (
        'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", '
        '"Never"' in (status_of(always.value)["message"])
    )
    with pytest.raises(ApiException) as immutable:
        batch.patch_namespaced_job(
            "worker-t1", NAMESPACE, {"spec": {"template": {"spec": {"activeDeadlineSeconds": 60}}}}
        )
    assert immutable.value.status == 422
    assert "spec.template: Invalid value" in status_of(immutable.value)["message"]
    assert "field is immutable" in status_of(immutable.value)["message"]


def test_job_helpers_play_the_job_controller_and_the_kubelet(
    batch: Api,
    core: Api,
    kubernetes_standin: KubernetesStandIn,
) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("run-ok"))
    batch.create_namespaced_job(NAMESPACE, job_manifest("run-bad"))
    batch.create_namespaced_job(NAMESPACE, job_manifest("run-slow", activeDeadlineSeconds=300))
    running = kubernetes_standin.start_job(NAMESPACE, "run-ok")
    assert running["status"]["phase"] == "Running"
    assert batch.read_namespaced_job_status("run-ok", NAMESPACE).status.active == 1
    result = json.dumps({"answeredTs": "1700000000.123456", "tokens": {"input": 10, "output": 2}})
    kubernetes_standin.finish_job(NAMESPACE, "run-ok", termination_message=result)
    kubernetes_standin.finish_job(
        NAMESPACE, "run-bad", succeeded=False, termination_message='{"error": "boom"}'
    )
    kubernetes_standin.time_out_job(NAMESPACE, "run-slow")
    jobs = {job.metadata.name: job.status for job in batch.list_namespaced_job(NAMESPACE).items}
    assert [c.type for c in jobs["run-ok"].conditions] == ["SuccessCriteriaMet", "Complete"]
    assert (jobs["run-ok"].succeeded, jobs["run-ok"].active, jobs["run-ok"].completion_time is not None) == (
        1,
        0,
        True,
    )
    assert [c.type for c in jobs["run-bad"].conditions] == ["FailureTarget", "Failed"]
    assert jobs["run-slow"].conditions[-1].reason == "DeadlineExceeded"
    pods = {pod.metadata.labels["job-name"]: pod for pod in core.list_namespaced_pod(NAMESPACE).items}
    terminated = pods["run-ok"].status.container_statuses[0].state.terminated
    assert (pods["run-ok"].status.phase, terminated.exit_code, terminated.message) == ("Succeeded", 0, result)
    assert pods["run-bad"].status.phase == "Failed"
    assert "run-slow" not in pods, "a timed-out Job's pod is deleted with its termination message"


def test_a_pod_template_naming_a_missing_service_account_is_refused(
    batch: Api,
    core: Api,
    kubernetes_standin: KubernetesStandIn,
) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("no-account", serviceAccountName="peerbot-worker"))
    with pytest.raises(JobPodRejected, match='serviceaccount "peerbot-worker" not found'):
        kubernetes_standin.start_job(NAMESPACE, "no-account")
    with pytest.raises(ApiException) as direct:
        core.create_namespaced_pod(
            NAMESPACE,
            {
                "metadata": {"name": "p"},
                "spec": {"serviceAccountName": "peerbot-worker", "containers": [{"name": "c", "image": "i"}]},
            },
        )
    assert direct.value.status == 403
    assert core.read_namespaced_service_account("default", NAMESPACE).metadata.name == "default"


def test_secrets_fold_string_data_and_check_base64(core: Api) -> None:
    created = core.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "tokens"}, "stringData": {"SLACK_BOT_TOKEN": "xoxb-1"}}
    )
    assert created.string_data is None
    assert base64.b64decode(created.data["SLACK_BOT_TOKEN"]) == b"xoxb-1"
    assert created.type == "Opaque"
    with pytest.raises(ApiException) as not_base64:
        core.create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": "raw"}, "data": {"key": "not base64!"}}
        )
    with pytest.raises(ApiException) as bad_key:
        core.create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": "keys"}, "stringData": {"bad key": "x"}}
        )
    assert (not_base64.value.status, bad_key.value.status) == (400, 422)


def test_events_are_served_by_both_event_apis(
    core: Api,
    kubernetes_api: kubernetes.client.ApiClient,
    kubectl: Kubectl,
    tmp_path: pathlib.Path,
) -> None:
    events_v1: Api = kubernetes.client.EventsV1Api(kubernetes_api)
    core.create_namespaced_event(
        NAMESPACE,
        {
            "metadata": {"name": "conv-1.started"},
            "reason": "Started",
            "message": "Working",
            "type": "Normal",
            "eventTime": "2025-01-01T00:00:00.000001Z",
            "action": "Run",
            "reportingComponent": "peerbot.ai/operator",
            "reportingInstance": "operator-0",
            "involvedObject": {
                "apiVersion": "peerbot.ai/v1",
                "kind": "Conversation",
                "name": "conv-1",
                "namespace": NAMESPACE,
            },
        },
    )
    seen = events_v1.read_namespaced_event("conv-1.started", NAMESPACE)
    assert (seen.note, seen.regarding.name, seen.reporting_controller) == (
        "Working",
        "conv-1",
        "peerbot.ai/operator",
    )
    # events.k8s.io/v1 validates strictly (the python client's model refuses the body: kubectl sends it).
    bare = tmp_path / "bare-event.json"
    bare.write_text(
        json.dumps(
            {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": "bare"},
                "reason": "X",
                "type": "Normal",
            }
        ),
        encoding="utf-8",
    )
    strict = kubectl(
        "create", "--raw", f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events", "-f", str(bare)
    )
    assert strict.returncode != 0
    assert "eventTime: Required value" in strict.stderr
    with pytest.raises(ApiException) as mismatched:
        core.create_namespaced_event(
            NAMESPACE,
            {
                "metadata": {"name": "elsewhere"},
                "reason": "R",
                "message": "m",
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "kube-system"},
            },
        )
    assert mismatched.value.status == 422
    assert "involvedObject.namespace" in status_of(mismatched.value)["message"]


# --- authentication, discovery, kubectl -------------------------------------------------------------------


def test_requests_without_the_bearer_token_are_401(kubernetes_standin: KubernetesStandIn) -> None:
    configuration = _configuration(kubernetes_standin)
    configuration.api_key = {"authorization": "Bearer wrong"}
    with kubernetes.client.ApiClient(configuration) as client, pytest.raises(ApiException) as caught:
        kubernetes.client.CoreV1Api(client).list_namespace()
    assert caught.value.status == 401
    assert status_of(caught.value)["reason"] == "Unauthorized"


def test_kubectl_discovers_the_conversation_resource(kubectl: Kubectl) -> None:
    resources = kubectl("api-resources", "--api-group", GROUP)
    assert resources.returncode == 0, resources.stderr
    assert resources.stdout.split("\n")[1].split() == [
        "conversations",
        "conv",
        "peerbot.ai/v1",
        "true",
        "Conversation",
    ]
    raw = kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}")
    assert raw.returncode == 0, raw.stderr
    entries = {entry["name"]: entry for entry in json.loads(raw.stdout)["resources"]}
    assert set(entries) == {"conversations", "conversations/status"}
    assert entries["conversations"]["verbs"] == [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    assert (entries["conversations"]["namespaced"], entries["conversations"]["categories"]) == (
        True,
        ["peerbot"],
    )
    assert entries["conversations/status"]["verbs"] == ["get", "patch", "update"]


def test_server_side_apply_needs_a_field_manager(kubernetes_standin: KubernetesStandIn) -> None:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/applied"
    code, status = raw_request(kubernetes_standin, "PATCH", path, conversation("applied"), APPLY_PATCH)
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )
    code, created = raw_request(
        kubernetes_standin, "PATCH", path + "?fieldManager=peerbot", conversation("applied"), APPLY_PATCH
    )
    assert (code, created["metadata"]["name"]) == (201, "applied")
    code, updated = raw_request(
        kubernetes_standin,
        "PATCH",
        path + "?fieldManager=peerbot",
        conversation("applied", requestedTs="7.7"),
        APPLY_PATCH,
    )
    assert (code, updated["spec"]["requestedTs"], updated["metadata"]["generation"]) == (200, "7.7", 2)


def test_kubectl_apply_get_table_and_json(
    kubectl: Kubectl, tmp_path: pathlib.Path, kubernetes_standin: KubernetesStandIn
) -> None:
    manifest = tmp_path / "conversation.yaml"
    manifest.write_text(json.dumps(conversation("conv-kubectl")), encoding="utf-8")
    applied = kubectl("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "conversation.peerbot.ai/conv-kubectl created"
    kubernetes_standin.patch(
        PLURAL,
        NAMESPACE,
        "conv-kubectl",
        {
            "status": {
                "phase": "Waiting",
                "turns": 2,
                "job": "conv-kubectl-t2",
                "tokens": {"input": 900, "output": 100, "total": 1000},
            }
        },
        subresource="status",
    )
    table = kubectl("get", "conversations")
    short = kubectl("get", "conv")
    wide = kubectl("get", "conv", "-o", "wide")
    as_json = kubectl("get", "conv", "conv-kubectl", "-o", "json")
    reapplied = kubectl("apply", "-f", str(manifest))
    for result in (table, short, wide, as_json, reapplied):
        assert result.returncode == 0, result.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "CHANNEL", "USER", "PHASE", "TURNS", "TOKENS", "JOB", "AGE"]
    assert row.split()[:7] == [
        "conv-kubectl",
        "C01ABCDEF",
        "U01ABCDEF",
        "Waiting",
        "2",
        "1000",
        "conv-kubectl-t2",
    ]
    assert row.split()[7] in {"0s", "1s", "2s"}
    assert short.stdout.splitlines()[1].split()[:7] == row.split()[:7]
    assert wide.stdout.splitlines()[0].split()[-3:] == ["PR", "ERROR", "WARM"]
    document = json.loads(as_json.stdout)
    assert (document["kind"], document["status"]["phase"]) == ("Conversation", "Waiting")
    assert reapplied.stdout.strip() == "conversation.peerbot.ai/conv-kubectl unchanged"


def test_kubectl_reports_validation_errors_from_the_server(kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps(conversation("conv-bad", threadTs="yesterday")), encoding="utf-8")
    applied = kubectl("apply", "-f", str(manifest))
    assert applied.returncode != 0
    assert (
        'The Conversation "conv-bad" is invalid: spec.threadTs: Invalid value: "yesterday"' in applied.stderr
    )


@pytest.fixture
def fresh_standin() -> Iterator[KubernetesStandIn]:
    with KubernetesStandIn() as standin:
        yield standin


def test_install_crd_makes_the_resource_served(fresh_standin: KubernetesStandIn) -> None:
    with pytest.raises(LookupError):
        fresh_standin.objects(PLURAL)
    fresh_standin.install_crd(CONVERSATION_CRD)
    fresh_standin.create(PLURAL, conversation("after-install"), NAMESPACE)
    assert [c["metadata"]["name"] for c in fresh_standin.objects("conv", NAMESPACE)] == ["after-install"]
    crd = fresh_standin.get("customresourcedefinitions", None, "conversations.peerbot.ai")
    assert crd is not None
    assert {c["type"] for c in crd["status"]["conditions"]} == {"Established", "NamesAccepted"}


def test_kmock_reactions_inject_faults_before_the_api_answers(
    kubernetes_standin: KubernetesStandIn, create_conversation: Callable[..., dict[str, Any]], custom: Api
) -> None:
    create_conversation("flaky")
    emulator = kubernetes_standin.emulator
    emulator["patch", kmock.resource(GROUP, VERSION, PLURAL)][:1] << 503 << {"kind": "Status", "code": 503}
    with pytest.raises(ApiException) as unavailable:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "flaky", {"spec": {"user": "U2"}}
        )
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "flaky", {"spec": {"user": "U2"}}
    )
    assert unavailable.value.status == 503
    assert patched["spec"]["user"] == "U2"
    assert [request.data for request in emulator["patch"]] == [{"spec": {"user": "U2"}}] * 2


async def test_the_stand_in_starts_and_stops_from_async_code() -> None:
    async with KubernetesStandIn(namespaces=["async-ns"]) as standin:
        namespaces = {item["metadata"]["name"] for item in standin.objects("namespaces")}
        assert standin.url.startswith("https://127.0.0.1:")
    assert {"default", "kube-system", "kube-public", "async-ns"} <= namespaces
    with pytest.raises(RuntimeError, match="not running"):
        standin.objects("namespaces")
