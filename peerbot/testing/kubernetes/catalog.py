"""The built-in resources the stand-in serves, and the resources a CustomResourceDefinition adds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peerbot.testing.kubernetes import behaviours, names
from peerbot.testing.kubernetes.resources import ResourceType


def builtin_resources() -> list[ResourceType]:
    """Namespaces, Pods, Events (core and events.k8s.io), Secrets, ConfigMaps, ServiceAccounts, Jobs, CRDs."""
    events = behaviours.EventBehaviour()
    return [
        ResourceType(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            behaviours.NamespaceBehaviour(),
            singular="namespace",
            short_names=("ns",),
            subresources=("status",),
            name_rule=names.dns1123_label,
            return_deleted_object=True,
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            behaviours.PodBehaviour(),
            singular="pod",
            short_names=("po",),
            categories=("all",),
            subresources=("status",),
            return_deleted_object=True,
        ),
        ResourceType("", "v1", "events", "Event", True, events, singular="event", short_names=("ev",)),
        ResourceType(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            True,
            events,
            singular="event",
            short_names=("ev",),
            storage_group="",
            storage_version="v1",
            storage_plural="events",
        ),
        ResourceType("", "v1", "secrets", "Secret", True, behaviours.SecretBehaviour(), singular="secret"),
        ResourceType(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            True,
            behaviours.ConfigMapBehaviour(),
            singular="configmap",
            short_names=("cm",),
        ),
        ResourceType(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            True,
            behaviours.ServiceAccountBehaviour(),
            singular="serviceaccount",
            short_names=("sa",),
        ),
        ResourceType(
            "batch",
            "v1",
            "jobs",
            "Job",
            True,
            behaviours.JobBehaviour(),
            singular="job",
            categories=("all",),
            subresources=("status",),
            has_generation=True,
            orphan_by_default=True,
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            behaviours.CustomResourceDefinitionBehaviour(),
            singular="customresourcedefinition",
            short_names=("crd", "crds"),
            categories=("api-extensions",),
            subresources=("status",),
            has_generation=True,
            unconditional_update=False,
        ),
    ]


def crd_resources(crd: Mapping[str, Any]) -> list[ResourceType]:
    """One served resource per served version of a (validated) CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    crd_names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
    storage = next((str(v["name"]) for v in versions if v.get("storage")), str(versions[0]["name"]))
    result: list[ResourceType] = []
    for position, version in enumerate(versions):
        if not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
        columns = tuple(version.get("additionalPrinterColumns") or ())
        selectable = tuple(str(item.get("jsonPath", "")) for item in version.get("selectableFields") or ())
        behaviour = behaviours.CustomResourceBehaviour(schema, columns, selectable)
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        result.append(
            ResourceType(
                str(spec.get("group")),
                str(version["name"]),
                str(crd_names["plural"]),
                str(crd_names["kind"]),
                spec.get("scope") == "Namespaced",
                behaviour,
                singular=str(crd_names.get("singular") or str(crd_names["kind"]).lower()),
                short_names=tuple(crd_names.get("shortNames") or ()),
                categories=tuple(crd_names.get("categories") or ()),
                subresources=subresources,
                list_kind=str(crd_names.get("listKind") or ""),
                storage_version=storage,
                custom=True,
                has_generation=True,
                unconditional_update=False,
                preferred=position == 0,
            )
        )
    return result
