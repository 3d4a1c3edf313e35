"""The resource types the stand-in serves and how URLs and names map onto them.

A :class:`ResourceType` is one ``group/version/plural`` as discovery lists it, plus the server-side rules
that differ between resources (generation tracking, unconditional updates, strategic merge, what DELETE
returns, the default garbage-collection policy). Two versions of one resource share a *storage* key
(``events`` and ``events.k8s.io/v1`` events are one set of objects, as in a real cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import kmock

from peerbot.testing.kubernetes import names
from peerbot.testing.kubernetes.errors import qualified

if TYPE_CHECKING:
    from peerbot.testing.kubernetes.behaviours import Behaviour

#: The verbs of a resource with full CRUD and watch, as discovery lists them.
ALL_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
#: The verbs of a status subresource.
STATUS_VERBS: Final = ("get", "patch", "update")

NameRule = Callable[[str], list[str]]


@dataclass(frozen=True, eq=False)
class ResourceType:
    """One served ``group/version/plural`` and its server-side rules."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    behaviour: Behaviour
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    list_kind: str = ""
    #: The group/version/plural the objects are stored under (defaults to this resource's own).
    storage_group: str | None = None
    storage_version: str | None = None
    storage_plural: str | None = None
    #: Defined by a CustomResourceDefinition (no strategic merge, kind/apiVersion required in bodies).
    custom: bool = False
    #: metadata.generation is set and bumped on spec changes.
    has_generation: bool = False
    #: PUT without metadata.resourceVersion is allowed (AllowUnconditionalUpdate).
    unconditional_update: bool = True
    #: DELETE answers with the deleted object rather than a Status (ReturnDeletedObject).
    return_deleted_object: bool = False
    #: Deleting without a propagationPolicy orphans dependents (batch/v1 Jobs, for backward compatibility).
    orphan_by_default: bool = False
    #: The rule for metadata.name.
    name_rule: NameRule = names.dns1123_subdomain
    #: The version clients prefer when a group serves several.
    preferred: bool = True
    #: Extra data the behaviour needs (a CRD version's schema and printer columns).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        """``v1`` or ``batch/v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``pods`` or ``conversations.peerbot.ai`` (as in error messages)."""
        return qualified(self.group, self.plural)

    @property
    def group_kind(self) -> str:
        """``Pod`` or ``Conversation.peerbot.ai`` (as in validation errors)."""
        return qualified(self.group, self.kind)

    @property
    def list_kind_name(self) -> str:
        """``PodList`` unless declared otherwise."""
        return self.list_kind or f"{self.kind}List"

    @property
    def storage(self) -> kmock.resource:
        """The key objects of this resource are stored under (in the emulator's ``objects``)."""
        return kmock.resource(
            self.storage_group if self.storage_group is not None else self.group,
            self.storage_version or self.version,
            self.storage_plural or self.plural,
        )

    @property
    def has_status(self) -> bool:
        """Whether ``status`` is a subresource (main-resource writes ignore it, /status writes only it)."""
        return "status" in self.subresources

    def __repr__(self) -> str:
        return f"ResourceType({self.api_version}/{self.plural})"


class Registry:
    """The resource types currently served, for routing, discovery and name lookups."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}

    def add(self, resource: ResourceType) -> None:
        """Serve a resource type (replacing one with the same group/version/plural)."""
        self._types[(resource.group, resource.version, resource.plural)] = resource

    def remove(self, group: str, version: str, plural: str) -> None:
        """Stop serving a resource type."""
        self._types.pop((group, version, plural), None)

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The resource served at this URL prefix, if any."""
        return self._types.get((group, version, plural))

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def group_versions(self) -> dict[str, list[str]]:
        """Served versions per group (preferred first), core group included under ``""``."""
        result: dict[str, list[str]] = {}
        for resource in sorted(self._types.values(), key=lambda r: (not r.preferred, r.version)):
            versions = result.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
        return result

    def sharing_storage(self, resource: ResourceType) -> list[ResourceType]:
        """All served versions whose objects are stored together with ``resource``'s."""
        return [other for other in self._types.values() if other.storage == resource.storage]

    def find(self, name: str) -> ResourceType:
        """Resolve what a test or kubectl user would type: ``conv``, ``Conversation``, ``jobs.batch``,
        ``batch/v1/jobs``, ``events.k8s.io/v1/events``. Preferred and core versions win ties.
        """
        text = name.strip()
        candidates = list(self._types.values())
        if "/" in text:
            *prefix, plural = text.split("/")
            api_version = "/".join(prefix)
            matches = [r for r in candidates if r.api_version == api_version and plural.lower() in _names(r)]
        else:
            word, _, group = text.partition(".")
            matches = [r for r in candidates if word.lower() in _names(r) and (not group or r.group == group)]
        if not matches:
            known = ", ".join(sorted({r.plural for r in candidates}))
            raise LookupError(f"No served resource is called {name!r}; served resources: {known}")
        matches.sort(key=lambda r: (not r.preferred, r.group != "", r.group, r.version))
        return matches[0]


def _names(resource: ResourceType) -> set[str]:
    return {
        resource.plural,
        resource.singular or resource.kind.lower(),
        resource.kind.lower(),
        *resource.short_names,
    }
