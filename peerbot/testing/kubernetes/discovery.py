"""API discovery and OpenAPI documents: how kubectl and kopf find out what the server serves.

Legacy discovery (``/api``, ``/apis``, ``/apis/{group}``, ``/apis/{group}/{version}``) lists each resource
with its kind, scope, short names, categories, subresources and verbs (kopf only serves resources whose
verbs allow it). kubectl asks for aggregated discovery first and falls back to these documents.

``/openapi/v3`` lists one document per group version; kubectl reads the document of a resource before
``apply``/``create`` to learn that the server validates fields itself (the ``fieldValidation`` query
parameter on the PATCH operation), and then sends ``?fieldValidation=Strict``.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from peerbot.testing.kubernetes import errors
from peerbot.testing.kubernetes.resources import STATUS_VERBS, Registry, ResourceType

#: The query parameters the write operations accept (what kubectl checks for before relying on the server).
_WRITE_PARAMETERS: Final = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def discovery_entries(resource: ResourceType) -> list[dict[str, Any]]:
    """The ``APIResourceList`` entries of one resource and its subresources."""
    entry: dict[str, Any] = {
        "name": resource.plural,
        "singularName": resource.singular or resource.kind.lower(),
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": list(resource.verbs),
    }
    if resource.short_names:
        entry["shortNames"] = list(resource.short_names)
    if resource.categories:
        entry["categories"] = list(resource.categories)
    entries = [entry]
    for subresource in resource.subresources:
        entries.append(
            {
                "name": f"{resource.plural}/{subresource}",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": list(STATUS_VERBS),
            }
        )
    return entries


def paths(registry: Registry) -> list[str]:
    """``GET /``: the served paths."""
    result = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi/v3"}
    for group, versions in registry.group_versions().items():
        if group:
            result.add(f"/apis/{group}")
            result.update(f"/apis/{group}/{version}" for version in versions)
    return sorted(result)


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{version}", "version": version} for version in versions],
        "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """``GET /api``: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list(registry: Registry) -> dict[str, Any]:
    """``GET /apis``: every named group and its versions."""
    groups = [
        _group_entry(group, versions)
        for group, versions in sorted(registry.group_versions().items())
        if group
    ]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> dict[str, Any]:
    """``GET /apis/{group}``; 404 for a group nothing serves."""
    versions = registry.group_versions().get(group)
    if not group or not versions:
        raise errors.no_such_path()
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any]:
    """``GET /api/v1`` or ``/apis/{group}/{version}``: the resources of a group version."""
    entries = [
        entry
        for resource in sorted(registry, key=lambda r: r.plural)
        if resource.group == group and resource.version == version
        for entry in discovery_entries(resource)
    ]
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


def openapi_root(registry: Registry, revision: int) -> dict[str, Any]:
    """``GET /openapi/v3``: where each group version's document is (the hash changes as resources do)."""
    result = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            result[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={revision:016X}"}
    return {"paths": result}


def _schema_name(group: str, version: str, kind: str) -> str:
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def openapi_document(registry: Registry, key: str, server_version: str) -> dict[str, Any]:
    """``GET /openapi/v3/{api/v1 | apis/group/version}``: a minimal OpenAPI v3 document of a group version.

    It holds each resource's paths and operations (with the write query parameters) and its schema (a
    CRD's own ``openAPIV3Schema`` for custom resources, an open object for built-ins).
    """
    parts = key.split("/")
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        raise errors.no_such_path()
    if version not in registry.group_versions().get(group, []):
        raise errors.no_such_path()
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    query = [
        {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for name in _WRITE_PARAMETERS
    ]
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for resource in registry:
        if resource.group != group or resource.version != version:
            continue
        gvk = {"group": group, "version": version, "kind": resource.kind}
        schema_name = _schema_name(group, version, resource.kind)
        validator = getattr(resource.behaviour, "validator", None)
        schema = copy.deepcopy(validator.schema) if validator is not None else {"type": "object"}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[schema_name] = schema
        ref = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}
        operation = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": query,
            "responses": {"200": {"description": "OK", **ref}},
        }
        if resource.namespaced:
            item_path = f"{prefix}/namespaces/{{namespace}}/{resource.plural}/{{name}}"
        else:
            item_path = f"{prefix}/{resource.plural}/{{name}}"
        path_parameters = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if resource.namespaced:
            path_parameters.append(
                {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        operations[item_path] = {
            "parameters": path_parameters + query,
            "get": dict(operation, **{"x-kubernetes-action": "get"}),
            "put": dict(operation, **{"x-kubernetes-action": "put", "requestBody": ref}),
            "patch": dict(operation, **{"x-kubernetes-action": "patch"}),
            "delete": dict(operation, **{"x-kubernetes-action": "delete"}),
        }
        operations[item_path.removesuffix("/{name}")] = {
            "parameters": path_parameters[1:] + query,
            "get": dict(operation, **{"x-kubernetes-action": "list"}),
            "post": dict(operation, **{"x-kubernetes-action": "post", "requestBody": ref}),
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": operations,
        "components": {"schemas": schemas},
    }
