"""The PATCH flavours of the Kubernetes API: JSON merge, JSON patch, strategic merge and (simplified) apply.

- ``application/merge-patch+json`` (RFC 7386): dicts merge, ``null`` deletes, lists are replaced.
- ``application/json-patch+json`` (RFC 6902): a body that is not a list of operations is a 400; an
  operation that cannot be applied (a failed ``test``, a missing path) is a 422, as in the API server's
  ``patch.go``. kopf relies on the 422 to detect a stale ``resourceVersion``.
- ``application/strategic-merge-patch+json``: built-in resources only (custom resources answer 415). Lists
  with a patch merge key (containers by ``name``, conditions by ``type``, finalizers as a set, ...) are
  merged item by item; the ``$patch``, ``$retainKeys``, ``$deleteFromPrimitiveList`` and
  ``$setElementOrder`` directives are understood.
- ``application/apply-patch+yaml`` (server-side apply) is simplified: the applied configuration is merged
  into the object (keyed lists merged, others replaced); fields dropped from a later apply are not
  removed, and there is no field ownership or apply conflict.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jsonpatch
import jsonpointer

from peerbot.testing.kubernetes import errors

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
APPLY_PATCH: Final = "application/apply-patch+yaml"

#: patch.go refuses JSON patches with more operations than this (413).
MAX_JSON_PATCH_OPERATIONS: Final = 10000

#: A list patched as a set of scalars (``patchStrategy:"merge"`` without a merge key).
PRIMITIVE_SET: Final = ""

# patchMergeKey of the list fields in the built-in types this stand-in serves (k8s.io/api/core/v1, batch/v1).
_POD_SPEC_LISTS: Final = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
_CONTAINER_LISTS: Final = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_CONTAINER_FIELDS: Final = frozenset({"containers", "initContainers", "ephemeralContainers"})


def list_strategy(path: Sequence[str]) -> str | None:
    """The merge key of the list at ``path`` (list indexes omitted), ``PRIMITIVE_SET``, or None (replace)."""
    if len(path) >= 2 and path[-2] == "metadata":
        if path[-1] == "finalizers":
            return PRIMITIVE_SET
        if path[-1] == "ownerReferences":
            return "uid"
    if len(path) >= 2 and path[-2] == "status" and path[-1] == "conditions":
        return "type"
    if len(path) >= 2 and path[-2] == "spec" and path[-1] in _POD_SPEC_LISTS:
        return _POD_SPEC_LISTS[path[-1]]
    if len(path) >= 2 and path[-2] in _CONTAINER_FIELDS and path[-1] in _CONTAINER_LISTS:
        return _CONTAINER_LISTS[path[-1]]
    if len(path) == 1 and path[0] in {"secrets", "imagePullSecrets"}:  # ServiceAccount
        return "name"
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and leaves ``target`` untouched."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Mapping[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch with the API server's status codes (400 malformed, 413 too long, 422 failed)."""
    if not isinstance(operations, list) or not all(isinstance(op, Mapping) for op in operations):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    if len(operations) > MAX_JSON_PATCH_OPERATIONS:
        raise errors.ApiError(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(operations)}",
            None,
        )
    try:
        result = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(dict(target)), in_place=False)
    except (
        jsonpatch.JsonPatchException,
        jsonpointer.JsonPointerException,
        KeyError,
        IndexError,
        TypeError,
    ) as e:
        raise errors.unprocessable() from e
    if not isinstance(result, dict):
        raise errors.unprocessable()
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: _strip_directives(item)
            for key, item in value.items()
            if not key.startswith("$") and item is not None
        }
    if isinstance(value, list):
        return [
            _strip_directives(item) for item in value if not (isinstance(item, Mapping) and "$patch" in item)
        ]
    return copy.deepcopy(value)


def _merge_keyed_list(original: list[Any], patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(item) for item in patch if not (isinstance(item, Mapping) and "$patch" in item)
        ]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, Mapping):
            raise errors.bad_request(f"unable to find api field in struct for the list item {item!r}")
        if key not in item:
            raise errors.bad_request(f"map: {dict(item)} does not contain declared merge key: {key}")
        position = next(
            (
                index
                for index, old in enumerate(result)
                if isinstance(old, Mapping) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(_strip_directives(item))
        else:
            result[position] = strategic_merge(result[position], item, path)
    return result


def strategic_merge(original: Mapping[str, Any], patch: Mapping[str, Any], path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch to a built-in object (see the module docstring for what is covered)."""
    if not isinstance(patch, Mapping):
        raise errors.bad_request("strategic merge patch must be a JSON object")
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in {None, "merge"}:
        raise errors.bad_request(f"Unknown patch type: {directive}")
    result: dict[str, Any] = copy.deepcopy(dict(original))
    retain = patch.pop("$retainKeys", None)
    for key in [key for key in patch if key.startswith("$")]:
        value = patch.pop(key)
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in (value or [])]
        elif not key.startswith("$setElementOrder/"):
            raise errors.bad_request(f"unknown patch directive {key}")
    if retain is not None:
        result = {key: value for key, value in result.items() if key in retain}
    for key, value in patch.items():
        here = (*path, key)
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            merged = strategic_merge(current if isinstance(current, Mapping) else {}, value, here)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            strategy = list_strategy(here)
            old = current if isinstance(current, list) else []
            if strategy is None:
                result[key] = _strip_directives(value)
            elif strategy == PRIMITIVE_SET:
                result[key] = old + [item for item in value if item not in old]
            else:
                result[key] = _merge_keyed_list(old, value, strategy, here)
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_configuration(
    current: Mapping[str, Any], applied: Mapping[str, Any], *, keyed_lists: bool
) -> dict[str, Any]:
    """Merge an applied configuration into an object (the simplified server-side apply)."""

    def merge(old: Any, new: Any, path: tuple[str, ...]) -> Any:
        if isinstance(new, Mapping):
            base: dict[str, Any] = copy.deepcopy(dict(old)) if isinstance(old, Mapping) else {}
            for key, value in new.items():
                if value is not None:
                    base[key] = merge(base.get(key), value, (*path, key))
            return base
        if isinstance(new, list) and keyed_lists and isinstance(old, list):
            strategy = list_strategy(path)
            if strategy == PRIMITIVE_SET:
                return old + [item for item in new if item not in old]
            if strategy:
                return _merge_keyed_list(old, new, strategy, path)
        return copy.deepcopy(new)

    result = merge(current, applied, ())
    assert isinstance(result, dict)
    return result
