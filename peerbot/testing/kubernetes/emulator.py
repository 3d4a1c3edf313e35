"""A strict Kubernetes API server: kmock's ``KubernetesEmulator``, made to behave like the real one.

kmock 0.8 gives the HTTP plumbing, a DSL for scripted replies and fault injection
(``emulator['patch', kmock.resource('batch/v1/jobs')] << 500``), request recording for assertions, and
an object store with history (``emulator.objects``). As released it is too lenient and too incomplete for
kopf, kubectl and the real clients, so this subclass serves the API itself (kmock's own fallbacks are not
registered; scripted reactions still take precedence) and adds what a real API server does:

- ``uid``, ``resourceVersion`` (one global revision), ``creationTimestamp``, ``generation``;
  ``generateName``; ``kind``/``apiVersion`` on lists; namespaces and discovery for kubectl and kopf;
- optimistic concurrency: a stale ``metadata.resourceVersion`` in a PUT or PATCH is a 409 Conflict,
  creating a taken name is a 409 AlreadyExists, a failed JSON-patch ``test`` is a 422;
- label and field selectors, ``limit``/``continue``; watches from a ``resourceVersion`` (410 when too old),
  ``sendInitialEvents`` with the initial-events-end bookmark, ``timeoutSeconds``, periodic bookmarks;
- the ``status`` subresource (main writes ignore status, /status writes ignore the rest); finalizers and
  ``deletionTimestamp``; ``propagationPolicy`` finalizers; namespace and CRD clean-up;
- validation: metadata rules, built-in rules (see :mod:`.behaviours`) and the CRD's ``openAPIV3Schema``
  with pruning and ``fieldValidation``; 422 Invalid with field causes;
- server-side tables for ``kubectl get`` (CRD printer columns included) and ``PartialObjectMetadata``;
- bearer-token authentication (401), as anonymous access to a real cluster is refused.

What the real cluster's controllers do is left to the test (see :class:`~.standin.KubernetesStandIn`):
nothing schedules or runs pods, and garbage collection runs only when asked (or with
``garbage_collector=True``). Not modelled: RBAC, admission webhooks, server-side apply field ownership,
protobuf, pod logs/exec, API priority and fairness.

All state lives on the event loop that serves the HTTP requests; every operation below is synchronous
between awaits, so no locks are needed. Use :class:`~.standin.KubernetesStandIn` to run it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import copy
import dataclasses
import datetime
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final

import aiohttp.web
import kmock
import yaml
from kmock._internal import rendering

from peerbot.testing.kubernetes import (
    catalog,
    discovery,
    errors,
    patches,
    selectors,
    tables,
    timefmt,
    validation,
)
from peerbot.testing.kubernetes.behaviours import CRD_CLEANUP_FINALIZER, Context
from peerbot.testing.kubernetes.resources import Registry, ResourceType

logger = logging.getLogger(__name__)

#: How many changes the server remembers for watches resuming from a resourceVersion (etcd compaction
#: and the watch cache forget old revisions too; an older resourceVersion gets 410 Gone).
WATCH_HISTORY: Final = 10_000
#: A real server sends a BOOKMARK about once a minute on watches that allow them; kopf's watches time out
#: after 70 s of silence, so a long-idle watch is kept alive the same way.
BOOKMARK_INTERVAL_SECONDS: Final = 60.0
#: Past versions kept per object in ``emulator.objects`` (assertions rarely need more; bounds memory).
OBJECT_HISTORY_LIMIT: Final = 200
#: Requests kept for kmock's request assertions before the oldest half is dropped (bounds memory).
REQUEST_LOG_LIMIT: Final = 20_000
#: generateName: five random characters from the API server's alphabet (no vowels, no confusables).
GENERATED_SUFFIX_LENGTH: Final = 5
GENERATED_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
#: generateName prefixes are cut to leave room for the suffix within 63 characters (maxGeneratedNameLength).
GENERATED_PREFIX_MAX: Final = 63 - GENERATED_SUFFIX_LENGTH
#: Namespaces every cluster has and that cannot be deleted.
IMMORTAL_NAMESPACES: Final = ("default", "kube-system", "kube-public")
#: What /version reports: the Kubernetes minor version the emulated behaviour follows.
SERVER_VERSION: Final = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-peerbot-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
#: Paths a real cluster serves to anonymous clients (system:public-info-viewer).
PUBLIC_PATHS: Final = frozenset({"/version", "/healthz", "/livez", "/readyz"})
#: The warning a real server gives when a batch/v1 Job is deleted without a propagation policy.
JOB_ORPHAN_WARNING: Final = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove "
    "them or set propagationPolicy=Orphan to suppress this warning"
)
#: The annotation on the bookmark that ends the initial events of a sendInitialEvents watch.
INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"

ORPHAN_FINALIZER: Final = "orphan"
FOREGROUND_FINALIZER: Final = "foregroundDeletion"
PROPAGATION_POLICIES: Final = ("Foreground", "Background", "Orphan")

StoredObject = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Change:
    """One committed change, as watches see it (objects in storage form)."""

    revision: int
    storage: kmock.resource
    type: str
    obj: StoredObject
    old: StoredObject | None


@dataclasses.dataclass
class Target:
    """What a resource URL addresses."""

    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclasses.dataclass(eq=False)
class _Watcher:
    storage: kmock.resource
    namespace: str | None
    queue: asyncio.Queue[Change | None]


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _is_namespaced_path(group: str, rest: list[str]) -> bool:
    """``namespaces/{ns}/{plural}...``, as opposed to a Namespace object or its subresources."""
    if rest[0] != "namespaces" or len(rest) < 3:
        return False
    return not (group == "" and len(rest) == 3 and rest[2] in {"status", "finalize"})


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"true", "1"}


def _without_volatile(obj: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(obj))
    meta = result.get("metadata") or {}
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return result


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in obj.items() if key not in {"metadata", "status", "apiVersion", "kind"}
    }


#: Where clients ask what they may do (``kubectl auth can-i``).
SELF_SUBJECT_ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


class StrictKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the behaviour of a real API server (see the module docstring)."""

    def __init__(
        self, *, token: str | None = None, garbage_collector: bool = False, watch_history: int = WATCH_HISTORY
    ) -> None:
        super().__init__()
        #: The bearer token clients must send; None accepts any client (not like a real cluster).
        self.token = token
        #: The served resource types (built-ins, plus the CRDs created).
        self.registry = Registry()
        for resource in catalog.builtin_resources():
            self.registry.add(resource)
        #: Unexpected exceptions while serving (bugs in the stand-in or in a test's reaction).
        self.internal_errors: list[BaseException] = []
        #: RBAC: what the client may NOT do, as (verb, group, "resource" or "resource/subresource"). Denied
        #: requests get 403 Forbidden as from a real API server, and SelfSubjectAccessReviews say so.
        self.denied: set[tuple[str, str, str]] = set()
        self._revision = 0
        self._changes: collections.deque[Change] = collections.deque(maxlen=watch_history)
        self._compacted = 0
        self._watchers: set[_Watcher] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._garbage_collector = garbage_collector
        self._gc_scheduled = False
        self._closed = False

    def __attrs_post_init__(self) -> None:
        """Register none of kmock's fallback reactions: this class serves the whole API itself."""

    # --- HTTP entry ---------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        request = self._record_request(raw_request, body)
        try:
            return await self._handle(request)
        except errors.ApiError as e:
            return self._json(e.code, e.status())
        except rendering.StreamingError as e:  # a scripted streaming reaction failed half-way
            raw = e.args[0]
            self.internal_errors.append(e.__cause__ or e)
            assert isinstance(raw, aiohttp.web.StreamResponse)
            return raw
        except kmock.KubernetesError as e:  # raised by a scripted reaction, rendered the kmock way
            return await self._render_error(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.internal_errors.append(e)
            logger.exception(
                "The Kubernetes stand-in failed to serve %s %s", raw_request.method, raw_request.path
            )
            return self._json(500, errors.internal(f"{type(e).__name__}: {e}").status())

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self._payloads:  # scripted reactions (fault injection, canned replies) come first
            try:
                return await kmock.RawHandler._handle(self, request)
            except NotImplementedError:
                pass  # nothing scripted matched: serve it as the API server would
        return await self._serve(request)

    def _record_request(self, raw_request: aiohttp.web.BaseRequest, body: bytes) -> rendering.Request:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        target = self._parse_resource_path(raw_request.path)
        group, version, plural, namespace, name, subresource = target or (None, None, None, None, None, None)
        method = raw_request.method.upper()
        action: kmock.action | None = None
        if target is not None:
            if method == "GET":
                watch = _truthy(raw_request.query.get("watch"))
                action = (
                    kmock.action.WATCH if watch else kmock.action.LIST if name is None else kmock.action.FETCH
                )
            elif method == "POST":
                action = kmock.action.CREATE
            elif method in {"PUT", "PATCH"}:
                action = kmock.action.UPDATE
            elif method == "DELETE":
                action = kmock.action.DELETE
        request = rendering.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            data=data,
            body=body,
            text=body.decode("utf-8", errors="replace"),
            action=action,
            resource=kmock.resource(group, version, plural) if target is not None else None,
            namespace=namespace,
            name=name,
            subresource=subresource,
        )
        self._requests.append(request)
        if len(self._requests) > REQUEST_LOG_LIMIT:
            del self._requests[: REQUEST_LOG_LIMIT // 2]
        return request

    @staticmethod
    def _parse_resource_path(path: str) -> tuple[str, str, str, str | None, str | None, str | None] | None:
        """(group, version, plural, namespace, name, subresource) of a resource URL, else None."""
        parts = [part for part in path.split("/") if part]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace: str | None = None
        if _is_namespaced_path(group, rest):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) >= 2 else None
        subresource = "/".join(rest[2:]) or None
        return group, version, plural, namespace, name, subresource

    # --- responses ----------------------------------------------------------------------------------------

    @staticmethod
    def _json(code: int, body: Any, warnings: list[str] | None = None) -> aiohttp.web.Response:
        response = aiohttp.web.Response(
            status=code, body=json.dumps(body).encode(), content_type="application/json"
        )
        for warning in dict.fromkeys(warnings or []):
            response.headers.add("Warning", f"299 - {json.dumps(warning)}")
        return response

    def _respond(
        self,
        request: rendering.Request,
        resource: ResourceType,
        code: int,
        body: dict[str, Any],
        warnings: list[str] | None = None,
    ) -> aiohttp.web.Response:
        accept = request.headers.get("Accept", "")
        is_object = body.get("kind") == resource.kind
        is_list = body.get("kind") == resource.list_kind_name
        if (is_object or is_list) and "as=Table" in accept:
            table = tables.table(
                resource, body, accept=accept, params=request.params, revision=self._revision
            )
            return self._json(code, table, warnings)
        if (is_object or is_list) and "as=PartialObjectMetadata" in accept:
            return self._json(code, tables.partial(body, listing=is_list), warnings)
        return self._json(code, body, warnings)

    # --- routing ------------------------------------------------------------------------------------------

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path.rstrip("/") or "/"
        if path in {"/healthz", "/livez", "/readyz"}:
            return aiohttp.web.Response(text="ok")
        if path == "/version":
            return self._json(200, SERVER_VERSION)
        self._authenticate(request)
        if request.method != "GET" and path in {"/", "/api", "/apis"}:
            raise errors.ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
            )
        if path == SELF_SUBJECT_ACCESS_REVIEWS:
            return self._access_review(request)
        registry = self.registry
        if path == "/":
            return self._json(200, {"paths": discovery.paths(registry)})
        if path == "/api":
            return self._json(200, discovery.api_versions(f"{request.url.host}:{request.url.port}"))
        if path == "/apis":
            return self._json(200, discovery.api_group_list(registry))
        if path == "/openapi/v3":
            return self._json(200, discovery.openapi_root(registry, self._revision))
        if path.startswith("/openapi/v3/"):
            key = path.removeprefix("/openapi/v3/")
            return self._json(200, discovery.openapi_document(registry, key, SERVER_VERSION["gitVersion"]))
        parts = [part for part in path.split("/") if part]
        if parts[0] == "apis" and len(parts) == 2:
            return self._json(200, discovery.api_group(registry, parts[1]))
        if parts[0] not in {"api", "apis"} or len(parts) < 2:
            return aiohttp.web.Response(status=404, text="404 page not found\n")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        if version not in registry.group_versions().get(group, []):
            raise errors.no_such_path()
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if not rest:
            if request.method != "GET":
                raise errors.no_such_path()
            return self._json(200, discovery.api_resource_list(registry, group, version))
        target = self._target(group, version, rest)
        return await self._dispatch(request, target)

    def _is_denied(self, verb: str, group: str, resource: str, subresource: str | None) -> bool:
        name = f"{resource}/{subresource}" if subresource else resource
        return (verb, group, name) in self.denied

    def _access_review(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """``POST selfsubjectaccessreviews``: whether the client may do what ``spec.resourceAttributes``
        names (everything is allowed except :attr:`denied`)."""
        if request.method != "POST":
            raise errors.method_not_allowed("authorization.k8s.io", "selfsubjectaccessreviews", "get")
        body = self._body(request)
        attributes = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
        verb, group = str(attributes.get("verb", "")), str(attributes.get("group", ""))
        resource, subresource = str(attributes.get("resource", "")), attributes.get("subresource") or None
        allowed = not self._is_denied(verb, group, resource, subresource)
        status: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            status["reason"] = "denied by the stand-in's RBAC rules"
        return self._json(201, {**body, "metadata": {"creationTimestamp": None}, "status": status})

    def _authorize(self, method: str, params: Mapping[str, str], target: Target) -> None:
        resource = target.resource
        if method == "GET":
            verb = "watch" if _truthy(params.get("watch")) else ("get" if target.name else "list")
        elif method == "DELETE" and target.name is None:
            verb = "deletecollection"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
        if self._is_denied(verb, resource.group, resource.plural, target.subresource):
            what = f"{resource.plural}/{target.subresource}" if target.subresource else resource.plural
            where = f' in the namespace "{target.namespace}"' if target.namespace else " at the cluster scope"
            raise errors.ApiError(
                403,
                "Forbidden",
                f"{errors.qualified(resource.group, resource.plural)}"
                f"{' ' + json.dumps(target.name) if target.name else ''} is forbidden: "
                f'User "stand-in" cannot {verb} resource "{what}" in API group "{resource.group}"{where}',
                {
                    "group": resource.group,
                    "kind": resource.plural,
                    **({"name": target.name} if target.name else {}),
                },
            )

    def _authenticate(self, request: rendering.Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(credential.strip(), self.token):
            raise errors.unauthorized()

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        namespace: str | None = None
        if _is_namespaced_path(group, rest):
            namespace, rest = rest[1], rest[2:]
        resource = self.registry.get(group, version, rest[0])
        if resource is None or len(rest) > 3:
            raise errors.no_such_path()
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and subresource not in resource.subresources:
            raise errors.no_such_path()
        if resource.namespaced and namespace is None and name is not None:
            raise errors.no_such_path()
        if not resource.namespaced and namespace is not None:
            raise errors.no_such_path()
        return Target(resource, namespace, name, subresource)

    async def _dispatch(self, request: rendering.Request, target: Target) -> aiohttp.web.StreamResponse:
        resource, method = target.resource, request.method
        params = request.params
        self._authorize(method, params, target)
        if method == "GET" and _truthy(params.get("watch")):
            return await self._watch(request, target)
        if method == "GET":
            if target.name is None:
                return self._respond(
                    request, resource, 200, self.list_objects(resource, target.namespace, params)
                )
            return self._respond(
                request, resource, 200, self.get_object(resource, target.namespace, target.name)
            )
        if method == "POST" and target.name is None and target.namespace is None and resource.namespaced:
            raise errors.method_not_allowed(resource.group, resource.plural, "create")
        if method == "POST" and target.name is None:
            obj, warnings = self.create_object(resource, target.namespace, self._body(request), params)
            return self._respond(request, resource, 201, obj, warnings)
        if method == "PUT" and target.name is not None:
            obj, warnings = self.replace_object(
                resource, target.namespace, target.name, self._body(request), params, target.subresource
            )
            return self._respond(request, resource, 200, obj, warnings)
        if method == "PATCH" and target.name is not None:
            content_type = request.headers.get("Content-Type", "")
            obj, warnings, created = self.patch_object(
                resource,
                target.namespace,
                target.name,
                request.body,
                content_type,
                params,
                target.subresource,
            )
            return self._respond(request, resource, 201 if created else 200, obj, warnings)
        if method == "DELETE" and target.name is not None and target.subresource is None:
            result, warnings = self.delete_object(
                resource, target.namespace, target.name, params, self._body(request, required=False)
            )
            return self._respond(request, resource, 200, result, warnings)
        if method == "DELETE" and target.name is None:
            result, warnings = self.delete_collection(
                resource, target.namespace, params, self._body(request, required=False)
            )
            return self._respond(request, resource, 200, result, warnings)
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )
        raise errors.method_not_allowed(resource.group, resource.plural, verb)

    @staticmethod
    def _body(request: rendering.Request, *, required: bool = True) -> Any:
        if not request.body:
            if required:
                raise errors.bad_request("the body of the request was empty")
            return None
        try:
            return json.loads(request.body)
        except ValueError as e:
            try:
                return yaml.safe_load(request.body)
            except yaml.YAMLError:
                raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from e

    # --- storage ------------------------------------------------------------------------------------------

    def _key(
        self, resource: ResourceType, namespace: str | None, name: str
    ) -> tuple[kmock.resource, str | None, str]:
        return (resource.storage, namespace if resource.namespaced else None, name)

    def stored(self, resource: ResourceType, namespace: str | None, name: str) -> StoredObject | None:
        """The current stored form of one object (do not mutate), or None."""
        key = self._key(resource, namespace, name)
        if key not in self._objects:
            return None
        entry = self._objects[key]
        return None if entry.deleted else entry.raw

    def iter_stored(self, resource: ResourceType, namespace: str | None = None) -> Iterator[StoredObject]:
        """The stored objects of a resource (in a namespace, or all), ordered by namespace and name."""
        storage = resource.storage
        keys = sorted(
            (key for key, entry in self._objects.items() if key[0] == storage and not entry.deleted),
            key=lambda key: (key[1] or "", key[2]),
        )
        for key in keys:
            if namespace is None or key[1] == namespace:
                yield self._objects[key].raw

    def _storage_types(self) -> dict[kmock.resource, ResourceType]:
        result: dict[kmock.resource, ResourceType] = {}
        for resource in self.registry:
            if resource.storage == kmock.resource(resource.group, resource.version, resource.plural):
                result[resource.storage] = resource
        for resource in self.registry:
            result.setdefault(resource.storage, resource)
        return result

    def _lookup(self, name: str, namespace: str | None, object_name: str) -> StoredObject | None:
        return self.stored(self.registry.find(name), namespace, object_name)

    def _commit(
        self, resource: ResourceType, obj: StoredObject, kind: str, old: StoredObject | None
    ) -> StoredObject:
        self._revision += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._revision)
        key = self._key(resource, _meta(obj).get("namespace"), _meta(obj)["name"])
        if key not in self._objects:
            self._objects[key] = obj
        else:
            entry = self._objects[key]
            entry.history.append(obj)
            if kind == "DELETED":
                entry.delete()
            if len(entry.history) > OBJECT_HISTORY_LIMIT:
                del entry.history[: len(entry.history) - OBJECT_HISTORY_LIMIT]
        self._publish(Change(self._revision, resource.storage, kind, obj, old))
        return obj

    def _publish(self, change: Change) -> None:
        if len(self._changes) == self._changes.maxlen:
            self._compacted = self._changes[0].revision
        self._changes.append(change)
        for watcher in list(self._watchers):
            if watcher.storage == change.storage:
                watcher.queue.put_nowait(change)
        self._wake_waiters()
        if self._garbage_collector and not self._gc_scheduled:
            self._gc_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_gc)

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def watching(self, resource: ResourceType, namespace: str | None = None) -> int:
        """How many watches are open on a resource (in a namespace, counting cluster-wide ones too)."""
        return sum(
            1
            for watcher in self._watchers
            if watcher.storage == resource.storage
            and (watcher.namespace in {None, namespace} or namespace is None)
        )

    def _scheduled_gc(self) -> None:
        self._gc_scheduled = False
        if not self._closed:
            self.collect_garbage()

    # --- reads --------------------------------------------------------------------------------------------

    def get_object(self, resource: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """GET one object, as the resource version serves it; 404 if absent."""
        stored = self.stored(resource, namespace, name)
        if stored is None:
            raise errors.not_found(resource.group, resource.plural, name)
        return resource.behaviour.to_served(resource, stored)

    def _selectable(self, resource: ResourceType, obj: Mapping[str, Any]) -> dict[str, str]:
        meta = _meta(obj)
        fields = {
            "metadata.name": str(meta.get("name", "")),
            "metadata.namespace": str(meta.get("namespace", "")),
        }
        fields.update(resource.behaviour.fields(obj))
        return fields

    def _selectors(
        self, resource: ResourceType, params: Mapping[str, str]
    ) -> tuple[selectors.LabelSelector, selectors.FieldSelector]:
        label = selectors.parse_label_selector(params.get("labelSelector"))
        field = selectors.parse_field_selector(params.get("fieldSelector"))
        known = set(self._selectable(resource, {"metadata": {}}))
        field.check_supported(known.__contains__, resource.behaviour.field_selector_error)
        return label, field

    def _matches(
        self,
        resource: ResourceType,
        obj: Mapping[str, Any],
        label: selectors.LabelSelector,
        field: selectors.FieldSelector,
    ) -> bool:
        return label.matches(_meta(obj).get("labels")) and field.matches(self._selectable(resource, obj))

    def list_objects(
        self, resource: ResourceType, namespace: str | None, params: Mapping[str, str]
    ) -> dict[str, Any]:
        """LIST with selectors and ``limit``/``continue`` (items carry kind only for custom resources)."""
        label, field = self._selectors(resource, params)
        matching = [
            obj for obj in self.iter_stored(resource, namespace) if self._matches(resource, obj, label, field)
        ]
        start = self._decode_continue(params.get("continue"))
        if start is not None:
            matching = [
                obj for obj in matching if (_meta(obj).get("namespace", ""), _meta(obj)["name"]) > start
            ]
        metadata: dict[str, Any] = {"resourceVersion": str(self._revision)}
        limit = int(params.get("limit") or 0) if (params.get("limit") or "0").isdigit() else 0
        if limit and len(matching) > limit:
            last = _meta(matching[limit - 1])
            token = json.dumps({"rv": self._revision, "start": [last.get("namespace", ""), last["name"]]})
            metadata["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
            metadata["remainingItemCount"] = len(matching) - limit
            matching = matching[:limit]
        items = []
        for obj in matching:
            served = resource.behaviour.to_served(resource, obj)
            if not resource.custom:
                served.pop("apiVersion", None)
                served.pop("kind", None)
            items.append(served)
        return {
            "kind": resource.list_kind_name,
            "apiVersion": resource.api_version,
            "metadata": metadata,
            "items": items,
        }

    @staticmethod
    def _decode_continue(token: str | None) -> tuple[str, str] | None:
        if not token:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            namespace, name = data["start"]
            return str(namespace), str(name)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise errors.bad_request(f"continue key is not valid: {e}") from e

    # --- writes -------------------------------------------------------------------------------------------

    def _context(self, params: Mapping[str, str]) -> Context:
        directive = params.get("fieldValidation") or "Warn"
        if directive not in {"Strict", "Warn", "Ignore"}:
            raise errors.bad_request(
                f'fieldValidation parameter unsupported: {directive}. Supported values are "Ignore", '
                '"Warn", "Strict"'
            )
        return Context(now=timefmt.now(), field_validation=directive, lookup=self._lookup)

    @staticmethod
    def _dry_run(params: Mapping[str, str]) -> bool:
        value = params.get("dryRun")
        if value is None:
            return False
        if value != "All":
            raise errors.bad_request(f"Invalid dry run value: {value}; the only supported value is All")
        return True

    @staticmethod
    def _check_type_meta(resource: ResourceType, body: Mapping[str, Any]) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if resource.custom:
            if not kind:
                raise errors.bad_request(f"Object 'Kind' is missing in '{json.dumps(body)}'")
            if not api_version:
                raise errors.bad_request(f"Object 'apiVersion' is missing in '{json.dumps(body)}'")
        if api_version and api_version != resource.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.api_version})"
            )
        if kind and kind != resource.kind:
            raise errors.bad_request(
                f'{resource.kind} in version "{resource.version}" cannot be handled as a {kind}: '
                f"the object's kind does not match the resource"
            )

    def _check_namespace(self, resource: ResourceType, meta: dict[str, Any], namespace: str | None) -> None:
        if not resource.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace

    def _check_namespace_open(self, resource: ResourceType, namespace: str | None, name: str) -> None:
        if not resource.namespaced or namespace is None:
            return
        namespaces = self.registry.find("namespaces")
        holder = self.stored(namespaces, None, namespace)
        if holder is None:
            raise errors.not_found("", "namespaces", namespace)
        if _meta(holder).get("deletionTimestamp"):
            raise errors.forbidden_request(
                resource.group,
                resource.plural,
                name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    def _generate_name(self, resource: ResourceType, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:GENERATED_PREFIX_MAX]
        while True:
            suffix = "".join(secrets.choice(GENERATED_ALPHABET) for _ in range(GENERATED_SUFFIX_LENGTH))
            if self.stored(resource, namespace, prefix + suffix) is None:
                return prefix + suffix

    def _normalise(self, resource: ResourceType, obj: StoredObject, ctx: Context) -> StoredObject:
        normalise = getattr(resource.behaviour, "normalise", None)
        if normalise is None:
            return obj
        served = resource.behaviour.to_served(resource, obj)
        return resource.behaviour.to_storage(resource, normalise(resource, served, ctx))

    def _validate(
        self,
        resource: ResourceType,
        obj: StoredObject,
        old: StoredObject | None,
        ctx: Context,
        *,
        generated: bool = False,
    ) -> None:
        meta = _meta(obj)
        problems = validation.validate_metadata(meta, resource.name_rule, generated=generated)
        served = resource.behaviour.to_served(resource, obj)
        problems += resource.behaviour.validate(resource, served if resource.custom else obj, old, ctx)
        if problems:
            name = meta.get("name") if isinstance(meta.get("name"), str) else ""
            raise errors.invalid_object(resource.group, resource.kind, name or "", problems)

    def create_object(
        self, resource: ResourceType, namespace: str | None, body: Any, params: Mapping[str, str]
    ) -> tuple[dict[str, Any], list[str]]:
        """POST: validate, default and store a new object; returns (served object, warnings)."""
        ctx = self._context(params)
        dry_run = self._dry_run(params)
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"the body of the request was in an unknown format: {type(body).__name__}"
            )
        self._check_type_meta(resource, body)
        obj = resource.behaviour.to_storage(resource, body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        self._check_namespace(resource, meta, namespace)
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        generated = False
        if not meta.get("name") and isinstance(meta.get("generateName"), str) and meta["generateName"]:
            meta["name"] = self._generate_name(resource, namespace, meta["generateName"])
            generated = True
        name = str(meta.get("name") or "")
        self._check_namespace_open(resource, namespace, name)
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timefmt.rfc3339(ctx.now)
        if resource.has_generation:
            meta["generation"] = 1
        if resource.has_status:
            obj.pop("status", None)
        obj = self._normalise(resource, obj, ctx)
        resource.behaviour.prepare_create(resource, obj, ctx)
        self._validate(resource, obj, None, ctx, generated=generated)
        if self.stored(resource, namespace, name) is not None:
            raise errors.already_exists(resource.group, resource.plural, name)
        if dry_run:
            _meta(obj).pop("resourceVersion", None)
            return resource.behaviour.to_served(resource, obj), ctx.warnings
        stored = self._commit(resource, obj, "ADDED", None)
        self._after_create(resource, stored)
        return resource.behaviour.to_served(resource, stored), ctx.warnings

    def replace_object(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        params: Mapping[str, str],
        subresource: str | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT: replace an object (or its status) with optimistic concurrency."""
        ctx = self._context(params)
        current = self.stored(resource, namespace, name)
        if current is None:
            raise errors.not_found(resource.group, resource.plural, name)
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"the body of the request was in an unknown format: {type(body).__name__}"
            )
        self._check_type_meta(resource, body)
        new = resource.behaviour.to_storage(resource, body)
        meta = new.setdefault("metadata", {})
        self._check_name(meta, name)
        self._check_namespace(resource, meta, namespace)
        version = meta.get("resourceVersion")
        if not version and not resource.unconditional_update:
            raise errors.invalid_object(
                resource.group,
                resource.kind,
                name,
                [
                    errors.invalid(
                        "metadata.resourceVersion", errors.Raw("0x0"), "must be specified for an update"
                    )
                ],
            )
        if version and version != _meta(current).get("resourceVersion"):
            raise errors.conflict(resource.group, resource.plural, name, errors.STALE_OBJECT)
        return self._update(resource, current, new, ctx, subresource, self._dry_run(params))

    @staticmethod
    def _check_name(meta: dict[str, Any], name: str) -> None:
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name

    def patch_object(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        body: bytes,
        content_type: str,
        params: Mapping[str, str],
        subresource: str | None = None,
    ) -> tuple[dict[str, Any], list[str], bool]:
        """PATCH with any of the four patch types; returns (served object, warnings, created)."""
        ctx = self._context(params)
        patch_type = content_type.split(";")[0].strip().lower()
        accepted = [patches.JSON_PATCH, patches.MERGE_PATCH, patches.APPLY_PATCH]
        if not resource.custom:
            accepted.insert(2, patches.STRATEGIC_MERGE_PATCH)
        if patch_type not in accepted:
            raise errors.unsupported_media_type(patch_type, accepted)
        current = self.stored(resource, namespace, name)
        if patch_type == patches.APPLY_PATCH:
            return self._server_side_apply(resource, namespace, name, body, params, subresource, current, ctx)
        if current is None:
            raise errors.not_found(resource.group, resource.plural, name)
        try:
            document = json.loads(body) if body else None
        except ValueError as e:
            raise errors.bad_request(f"error decoding patch: {e}") from e
        served = resource.behaviour.to_served(resource, current)
        if patch_type == patches.JSON_PATCH:
            patched = patches.json_patch(served, document)
        elif patch_type == patches.MERGE_PATCH:
            if not isinstance(document, dict):
                raise errors.bad_request("error decoding patch: a merge patch must be a JSON object")
            patched = patches.merge_patch(served, document)
        else:
            if not isinstance(document, dict):
                raise errors.bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object"
                )
            patched = patches.strategic_merge(served, document)
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata", {}), dict):
            raise errors.bad_request("the patched object is not a Kubernetes object")
        self._check_type_meta(resource, patched)
        new = resource.behaviour.to_storage(resource, patched)
        meta = new.setdefault("metadata", {})
        self._check_name(meta, name)
        self._check_namespace(resource, meta, namespace)
        version = meta.get("resourceVersion")
        if version and version != _meta(current).get("resourceVersion"):
            raise errors.conflict(resource.group, resource.plural, name, errors.STALE_OBJECT)
        obj, warnings = self._update(resource, current, new, ctx, subresource, self._dry_run(params))
        return obj, warnings, False

    def _server_side_apply(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        body: bytes,
        params: Mapping[str, str],
        subresource: str | None,
        current: StoredObject | None,
        ctx: Context,
    ) -> tuple[dict[str, Any], list[str], bool]:
        if not params.get("fieldManager"):
            raise errors.invalid_object(
                "meta.k8s.io",
                "PatchOptions",
                "",
                [errors.required("fieldManager", "is required for apply patch")],
            )
        try:
            applied = yaml.safe_load(body) if body else None
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from e
        if not isinstance(applied, dict):
            raise errors.bad_request("error decoding YAML: the applied configuration must be an object")
        if not applied.get("apiVersion") or not applied.get("kind"):
            raise errors.bad_request("invalid object type: apiVersion and kind must be set for apply")
        if current is None:
            if subresource is not None:
                raise errors.not_found(resource.group, resource.plural, name)
            meta = applied.setdefault("metadata", {})
            self._check_name(meta, name)
            obj, warnings = self.create_object(resource, namespace, applied, params)
            return obj, warnings, True
        served = resource.behaviour.to_served(resource, current)
        merged = patches.apply_configuration(served, applied, keyed_lists=not resource.custom)
        self._check_type_meta(resource, merged)
        new = resource.behaviour.to_storage(resource, merged)
        meta = new.setdefault("metadata", {})
        self._check_name(meta, name)
        self._check_namespace(resource, meta, namespace)
        if applied.get("metadata", {}).get("resourceVersion") not in {
            None,
            _meta(current).get("resourceVersion"),
        }:
            raise errors.conflict(resource.group, resource.plural, name, errors.STALE_OBJECT)
        meta["resourceVersion"] = _meta(current).get("resourceVersion")
        obj, warnings = self._update(resource, current, new, ctx, subresource, self._dry_run(params))
        return obj, warnings, False

    def _update(
        self,
        resource: ResourceType,
        old: StoredObject,
        new: StoredObject,
        ctx: Context,
        subresource: str | None,
        dry_run: bool,
    ) -> tuple[dict[str, Any], list[str]]:
        """The shared tail of PUT and PATCH: status rules, system fields, generation, validation, commit."""
        old_meta = _meta(old)
        name = old_meta["name"]
        if subresource == "status":
            status = new.get("status")
            result = copy.deepcopy(old)
            if status is None:
                result.pop("status", None)
            else:
                result["status"] = status
            new = result
        elif resource.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
            raise errors.invalid_object(
                resource.group, resource.kind, name, [errors.immutable("metadata.uid", meta["uid"])]
            )
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ):
            if key in old_meta:
                meta[key] = copy.deepcopy(old_meta[key])
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        new = self._normalise(resource, new, ctx)
        meta = _meta(new)
        resource.behaviour.prepare_update(resource, new, old, ctx)
        if old_meta.get("deletionTimestamp"):
            added = [
                item
                for item in meta.get("finalizers") or []
                if item not in (old_meta.get("finalizers") or [])
            ]
            if added:
                raise errors.invalid_object(
                    resource.group,
                    resource.kind,
                    name,
                    [
                        errors.forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, found new "
                            f"finalizers {json.dumps(added)}",
                        )
                    ],
                )
        if resource.has_generation and _spec_part(new) != _spec_part(old):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        self._validate(resource, new, old, ctx)
        if _without_volatile(new) == _without_volatile(old):
            return resource.behaviour.to_served(
                resource, old
            ), ctx.warnings  # a no-op: no new resourceVersion
        if dry_run:
            return resource.behaviour.to_served(resource, new), ctx.warnings
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            final = self._remove(resource, new)
            return resource.behaviour.to_served(resource, final), ctx.warnings
        stored = self._commit(resource, new, "MODIFIED", old)
        return resource.behaviour.to_served(resource, stored), ctx.warnings

    # --- deletion -----------------------------------------------------------------------------------------

    def delete_object(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        params: Mapping[str, str],
        options: Any,
    ) -> tuple[dict[str, Any], list[str]]:
        """DELETE one object: finalizers defer it (deletionTimestamp); otherwise it is gone at once."""
        current = self.stored(resource, namespace, name)
        if current is None:
            raise errors.not_found(resource.group, resource.plural, name)
        options = options if isinstance(options, dict) else {}
        preconditions = options.get("preconditions") or {}
        meta = _meta(current)
        for key, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = preconditions.get(key)
            if wanted and wanted != meta.get(key):
                raise errors.conflict(
                    resource.group,
                    resource.plural,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted}, {label} in object meta: "
                    f"{meta.get(key)}",
                )
        warnings: list[str] = []
        policy = self._propagation_policy(resource, params, options, warnings)
        if resource.plural == "namespaces" and resource.group == "" and name in IMMORTAL_NAMESPACES:
            raise errors.forbidden_request("", "namespaces", name, "this namespace may not be deleted")
        result = self._delete(resource, current, policy, dry_run=self._dry_run(params))
        return result, warnings

    @staticmethod
    def _propagation_policy(
        resource: ResourceType, params: Mapping[str, str], options: Mapping[str, Any], warnings: list[str]
    ) -> str | None:
        policy = options.get("propagationPolicy") or params.get("propagationPolicy")
        orphan = options.get("orphanDependents", params.get("orphanDependents"))
        if policy is not None and policy not in PROPAGATION_POLICIES:
            raise errors.invalid_object(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                [errors.not_supported("propagationPolicy", policy, [*PROPAGATION_POLICIES, "nil"])],
            )
        if policy is None and orphan is not None:
            policy = "Orphan" if str(orphan).lower() == "true" else "Background"
        if policy is None and resource.orphan_by_default:
            warnings.append(JOB_ORPHAN_WARNING)
            policy = "Orphan"
        return str(policy) if policy is not None else None

    def _delete(
        self, resource: ResourceType, current: StoredObject, policy: str | None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        meta = _meta(current)
        if meta.get("deletionTimestamp"):
            return resource.behaviour.to_served(resource, current)
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Orphan" and ORPHAN_FINALIZER not in finalizers:
            finalizers.append(ORPHAN_FINALIZER)
        if policy == "Foreground" and FOREGROUND_FINALIZER not in finalizers:
            finalizers.append(FOREGROUND_FINALIZER)
        is_namespace = resource.group == "" and resource.plural == "namespaces"
        if finalizers or is_namespace:
            new = copy.deepcopy(current)
            new_meta = _meta(new)
            if finalizers:
                new_meta["finalizers"] = finalizers
            new_meta["deletionTimestamp"] = timefmt.rfc3339(timefmt.now())
            new_meta["deletionGracePeriodSeconds"] = 0
            if int(new_meta.get("generation", 0)) > 0:
                new_meta["generation"] = int(new_meta["generation"]) + 1
            if is_namespace:
                new.setdefault("status", {})["phase"] = "Terminating"
            if dry_run:
                return resource.behaviour.to_served(resource, new)
            stored = self._commit(resource, new, "MODIFIED", current)
            self._after_deletion_started(resource, stored)
            latest = self.stored(resource, _meta(stored).get("namespace"), _meta(stored)["name"]) or stored
            return resource.behaviour.to_served(resource, latest)
        if dry_run:
            return resource.behaviour.to_served(resource, current)
        final = self._remove(resource, current)
        if resource.return_deleted_object:
            return resource.behaviour.to_served(resource, final)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": _meta(final)["name"],
                "group": resource.group,
                "kind": resource.plural,
                "uid": _meta(final).get("uid"),
            },
        }

    def delete_collection(
        self, resource: ResourceType, namespace: str | None, params: Mapping[str, str], options: Any
    ) -> tuple[dict[str, Any], list[str]]:
        """DELETE on a collection: every selected object, as a list of what was deleted."""
        label, field = self._selectors(resource, params)
        options = options if isinstance(options, dict) else {}
        warnings: list[str] = []
        policy = self._propagation_policy(resource, params, options, warnings)
        dry_run = self._dry_run(params)
        items = []
        for obj in list(self.iter_stored(resource, namespace)):
            if self._matches(resource, obj, label, field):
                self._delete(resource, obj, policy, dry_run=dry_run)
                items.append(resource.behaviour.to_served(resource, obj))
        body = {
            "kind": resource.list_kind_name,
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }
        return body, warnings

    def _remove(self, resource: ResourceType, obj: StoredObject) -> StoredObject:
        final = self._commit(resource, obj, "DELETED", obj)
        self._after_removal(resource, final)
        return final

    # --- what the control plane does on its own (namespace, CRD and service-account controllers) ------------

    def _after_create(self, resource: ResourceType, obj: StoredObject) -> None:
        if resource.group == "" and resource.plural == "namespaces":
            accounts = self.registry.find("serviceaccounts")
            name = _meta(obj)["name"]
            if self.stored(accounts, name, "default") is None:
                self.create_object(accounts, name, {"metadata": {"name": "default"}}, {})
        elif resource.group == "apiextensions.k8s.io" and resource.plural == "customresourcedefinitions":
            self._serve_crd(obj)

    def _after_deletion_started(self, resource: ResourceType, obj: StoredObject) -> None:
        if resource.group == "" and resource.plural == "namespaces":
            self._finalize_namespace(_meta(obj)["name"])
        elif resource.group == "apiextensions.k8s.io" and resource.plural == "customresourcedefinitions":
            self._finalize_crd(obj)

    def _after_removal(self, resource: ResourceType, obj: StoredObject) -> None:
        namespace = _meta(obj).get("namespace")
        if resource.namespaced and namespace:
            holder = self.stored(self.registry.find("namespaces"), None, namespace)
            if holder is not None and _meta(holder).get("deletionTimestamp"):
                self._finalize_namespace(namespace)
        if resource.group == "apiextensions.k8s.io" and resource.plural == "customresourcedefinitions":
            self._unserve_crd(obj)
        elif resource.custom:
            crds = self.registry.find("customresourcedefinitions")
            crd = self.stored(crds, None, f"{resource.plural}.{resource.group}")
            if crd is not None and _meta(crd).get("deletionTimestamp"):
                self._finalize_crd(crd)

    def _finalize_namespace(self, namespace: str) -> None:
        remaining = 0
        for resource in self._storage_types().values():
            if not resource.namespaced:
                continue
            for obj in list(self.iter_stored(resource, namespace)):
                current = self.stored(resource, namespace, _meta(obj)["name"])
                if current is not None and not _meta(current).get("deletionTimestamp"):
                    self._delete(resource, current, "Background")
                if self.stored(resource, namespace, _meta(obj)["name"]) is not None:
                    remaining += 1
        namespaces = self.registry.find("namespaces")
        holder = self.stored(namespaces, None, namespace)
        if remaining == 0 and holder is not None:
            final = copy.deepcopy(holder)
            final["spec"] = {}
            self._remove(namespaces, final)

    def _serve_crd(self, crd: StoredObject) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group"), (spec.get("names") or {}).get("plural")
        for resource in self.registry:
            if resource.custom and resource.group == group and resource.plural == plural:
                self.registry.remove(resource.group, resource.version, resource.plural)
        for resource in catalog.crd_resources(crd):
            self.registry.add(resource)

    def _unserve_crd(self, crd: StoredObject) -> None:
        spec = crd.get("spec") or {}
        for resource in self.registry:
            if (
                resource.custom
                and resource.group == spec.get("group")
                and resource.plural == (spec.get("names") or {}).get("plural")
            ):
                self.registry.remove(resource.group, resource.version, resource.plural)

    def _finalize_crd(self, crd: StoredObject) -> None:
        spec = crd.get("spec") or {}
        served = [
            r
            for r in self.registry
            if r.custom
            and r.group == spec.get("group")
            and r.plural == (spec.get("names") or {}).get("plural")
        ]
        remaining = 0
        if served:
            resource = served[0]
            for obj in list(self.iter_stored(resource)):
                if not _meta(obj).get("deletionTimestamp"):
                    self._delete(resource, obj, "Background")
                if self.stored(resource, _meta(obj).get("namespace"), _meta(obj)["name"]) is not None:
                    remaining += 1
        crds = self.registry.find("customresourcedefinitions")
        current = self.stored(crds, None, _meta(crd)["name"])
        if remaining == 0 and current is not None:
            final = copy.deepcopy(current)
            final_meta = _meta(final)
            final_meta["finalizers"] = [
                item for item in final_meta.get("finalizers") or [] if item != CRD_CLEANUP_FINALIZER
            ]
            if final_meta["finalizers"]:
                self._commit(crds, final, "MODIFIED", current)
            else:
                self._remove(crds, final)

    # --- garbage collection (on request)

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """One full pass of the garbage collector; returns (resource, namespace, name) of what it deleted.

        Dependents whose owners (``metadata.ownerReferences``) are all gone are deleted; the ``orphan`` and
        ``foregroundDeletion`` finalizers that ``propagationPolicy`` added are processed.
        """
        deleted: list[tuple[str, str | None, str]] = []
        for _ in range(100):  # chains of owners resolve in a few rounds; the bound only guards against bugs
            if not self._gc_round(deleted):
                break
        return deleted

    def _live(self) -> list[tuple[ResourceType, StoredObject]]:
        return [
            (resource, obj)
            for resource in self._storage_types().values()
            for obj in self.iter_stored(resource)
        ]

    def _gc_round(self, deleted: list[tuple[str, str | None, str]]) -> bool:
        live = self._live()
        uids = {_meta(obj).get("uid") for _, obj in live}
        for resource, obj in live:
            meta = _meta(obj)
            finalizers = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and ORPHAN_FINALIZER in finalizers:
                self._orphan_dependents(str(meta.get("uid")), live)
                self._drop_finalizer(resource, obj, ORPHAN_FINALIZER)
                return True
            if meta.get("deletionTimestamp") and FOREGROUND_FINALIZER in finalizers:
                dependents = [
                    (dep_resource, dependent)
                    for dep_resource, dependent in live
                    if any(
                        ref.get("uid") == meta.get("uid")
                        for ref in _meta(dependent).get("ownerReferences") or []
                    )
                ]
                if not dependents:
                    self._drop_finalizer(resource, obj, FOREGROUND_FINALIZER)
                    return True
                changed = False
                for dep_resource, dependent in dependents:
                    if not _meta(dependent).get("deletionTimestamp"):
                        self._delete(dep_resource, dependent, "Background")
                        deleted.append(
                            (dep_resource.plural, _meta(dependent).get("namespace"), _meta(dependent)["name"])
                        )
                        changed = True
                if changed:
                    return True
                continue  # dependents are still finalizing: the owner waits for them
            owners = meta.get("ownerReferences") or []
            if (
                owners
                and not meta.get("deletionTimestamp")
                and not any(owner.get("uid") in uids for owner in owners)
            ):
                self._delete(resource, obj, "Background")
                deleted.append((resource.plural, meta.get("namespace"), meta["name"]))
                return True
        return False

    def _orphan_dependents(self, owner_uid: str, live: list[tuple[ResourceType, StoredObject]]) -> None:
        for resource, obj in live:
            references = _meta(obj).get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in references):
                new = copy.deepcopy(obj)
                remaining = [ref for ref in references if ref.get("uid") != owner_uid]
                if remaining:
                    _meta(new)["ownerReferences"] = remaining
                else:
                    _meta(new).pop("ownerReferences", None)
                self._commit(resource, new, "MODIFIED", obj)

    def _drop_finalizer(self, resource: ResourceType, obj: StoredObject, finalizer: str) -> None:
        current = self.stored(resource, _meta(obj).get("namespace"), _meta(obj)["name"])
        if current is None:
            return
        new = copy.deepcopy(current)
        _meta(new)["finalizers"] = [item for item in _meta(new).get("finalizers") or [] if item != finalizer]
        if not _meta(new)["finalizers"]:
            _meta(new).pop("finalizers")
            self._remove(resource, new)
        else:
            self._commit(resource, new, "MODIFIED", current)

    # --- watches ------------------------------------------------------------------------------------------

    async def _watch(self, request: rendering.Request, target: Target) -> aiohttp.web.StreamResponse:
        resource, params = target.resource, request.params
        label, field = self._selectors(resource, params)
        if target.name is not None:
            field = selectors.FieldSelector(
                (*field.terms, selectors.FieldRequirement("metadata.name", target.name, False))
            )
        since = params.get("resourceVersion") or ""
        initial_events = _truthy(params.get("sendInitialEvents"))
        bookmarks = _truthy(params.get("allowWatchBookmarks"))
        if initial_events and params.get("resourceVersionMatch") != "NotOlderThan":
            raise errors.invalid_object(
                "meta.k8s.io",
                "ListOptions",
                "",
                [
                    errors.forbidden(
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                ],
            )
        if since and since != "0" and not since.isdigit():
            raise errors.bad_request(f"invalid resource version: {since}")
        timeout = float(params["timeoutSeconds"]) if (params.get("timeoutSeconds") or "").isdigit() else None

        def visible(obj: Mapping[str, Any]) -> bool:
            namespace_ok = target.namespace is None or _meta(obj).get("namespace") == target.namespace
            return namespace_ok and self._matches(resource, obj, label, field)

        # Everything below up to the first await runs atomically: no change can slip between the snapshot
        # (or the replay) and the watcher's registration.
        watcher: _Watcher | None = _Watcher(resource.storage, target.namespace, asyncio.Queue())
        prelude: list[dict[str, Any]] = []
        if since and since != "0" and not initial_events:
            revision = int(since)
            if revision < self._compacted:
                message = f"too old resource version: {revision} ({self._compacted + 1})"
                prelude.append({"type": "ERROR", "object": errors.expired(message).status()})
                watcher = None
            else:
                assert watcher is not None
                for change in self._changes:
                    if change.revision > revision and change.storage == resource.storage:
                        watcher.queue.put_nowait(change)
        else:
            for obj in self.iter_stored(resource, target.namespace):
                if visible(obj):
                    prelude.append({"type": "ADDED", "object": resource.behaviour.to_served(resource, obj)})
            if initial_events and bookmarks:
                prelude.append(self._bookmark(resource, {INITIAL_EVENTS_END: "true"}))
        if watcher is not None:
            self._watchers.add(watcher)
            self._wake_waiters()
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        table = "as=Table" in request.headers.get("Accept", "")
        try:
            await response.prepare(request._raw_request)
            for event in prelude:
                await response.write(self._watch_line(request, resource, event, table))
            if watcher is not None:
                deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
                async for event in self._watch_events(watcher, resource, visible, deadline, bookmarks):
                    await response.write(self._watch_line(request, resource, event, table))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; nothing to tell it
        finally:
            if watcher is not None:
                self._watchers.discard(watcher)
        return response

    def _watch_line(
        self, request: rendering.Request, resource: ResourceType, event: dict[str, Any], table: bool
    ) -> bytes:
        if table and event["type"] in {"ADDED", "MODIFIED", "DELETED"}:
            accept = request.headers.get("Accept", "")
            printed = tables.table(
                resource, event["object"], accept=accept, params=request.params, revision=self._revision
            )
            event = {"type": event["type"], "object": printed}
        return json.dumps(event).encode() + b"\n"

    def _bookmark(self, resource: ResourceType, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self._revision)}
        if annotations:
            meta["annotations"] = annotations
        return {
            "type": "BOOKMARK",
            "object": {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta},
        }

    async def _watch_events(
        self,
        watcher: _Watcher,
        resource: ResourceType,
        visible: Callable[[Mapping[str, Any]], bool],
        deadline: float | None,
        bookmarks: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        while not self._closed:
            wait = BOOKMARK_INTERVAL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return
            try:
                change = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and (deadline is None or loop.time() < deadline):
                    yield self._bookmark(resource)
                continue
            if change is None:
                return
            was = change.old is not None and change.type != "ADDED" and visible(change.old)
            now = visible(change.obj)
            obj = resource.behaviour.to_served(resource, change.obj)
            if change.type == "DELETED":
                if was or now:
                    yield {"type": "DELETED", "object": obj}
            elif change.type == "ADDED" or (now and not was):
                if now:
                    yield {"type": "ADDED", "object": obj}
            elif now:
                yield {"type": "MODIFIED", "object": obj}
            elif was:
                yield {"type": "DELETED", "object": obj}

    def close_watches(self) -> None:
        """End every open watch (on shutdown), so the server can stop without waiting for them."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    # --- waiting for changes --------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], Any]) -> Any:
        """Re-check ``predicate`` after every change (and new watch) until it returns something truthy.

        It waits for ever: bound it with ``asyncio.timeout()``. Ends with CancelledError at shutdown.
        """
        loop = asyncio.get_running_loop()
        while True:
            result = predicate()
            if result:
                return result
            if self._closed:
                raise asyncio.CancelledError("the Kubernetes stand-in is shutting down")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    @property
    def revision(self) -> int:
        """The current (global) resourceVersion."""
        return self._revision

    def now(self) -> datetime.datetime:
        """The server's clock."""
        return timefmt.now()
