"""Server-side printing: the ``Table`` and ``PartialObjectMetadata`` forms clients ask for in ``Accept``.

``kubectl get`` asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the server's columns
(for custom resources, the CRD's ``additionalPrinterColumns``; dates as ages computed server-side). Metadata
informers ask for ``as=PartialObjectMetadata``. Rows carry the object's metadata unless
``?includeObject=Object`` or ``None`` says otherwise, as in the API server's ``transformObject``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from peerbot.testing.kubernetes import timefmt
from peerbot.testing.kubernetes.resources import ResourceType


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _partial_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(_meta(obj)),
    }


def partial(body: Mapping[str, Any], *, listing: bool) -> dict[str, Any]:
    """An object as ``PartialObjectMetadata``, or a list as ``PartialObjectMetadataList``."""
    if not listing:
        return _partial_object(body)
    return {
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(body.get("metadata", {})),
        "items": [_partial_object(item) for item in body.get("items", [])],
    }


def table(
    resource: ResourceType, body: Mapping[str, Any], *, accept: str, params: Mapping[str, str], revision: int
) -> dict[str, Any]:
    """One object or one list (as served) as a ``Table`` of the resource's columns."""
    now = timefmt.now()
    listing = body.get("kind") == resource.list_kind_name
    items = body.get("items") if listing else [body]
    include = params.get("includeObject", "Metadata")
    rows = []
    for item in items or []:
        served = dict(item, apiVersion=resource.api_version, kind=resource.kind)
        row: dict[str, Any] = {"cells": resource.behaviour.cells(resource, served, now)}
        if include == "Object":
            row["object"] = served
        elif include != "None":
            row["object"] = _partial_object(served)
        rows.append(row)
    version = "v1beta1" if "v=v1beta1" in accept and "v=v1;" not in accept else "v1"
    result: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": {"resourceVersion": _meta(body).get("resourceVersion", str(revision))},
        "rows": rows,
    }
    if (params.get("noHeaders") or "").lower() not in {"true", "1"}:
        result["columnDefinitions"] = resource.behaviour.columns(resource)
    if listing:
        for key in ("continue", "remainingItemCount"):
            if key in (body.get("metadata") or {}):
                result["metadata"][key] = body["metadata"][key]
    return result
