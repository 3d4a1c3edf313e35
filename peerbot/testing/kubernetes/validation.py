"""Object validation shared by all resources: ``metadata`` rules and custom resources' OpenAPI schemas.

Custom resources go through what the apiextensions server does, in its order: prune fields the schema does
not know (reported as ``unknown field "spec.x"``: a warning by default, a 400 with
``?fieldValidation=Strict``, as kubectl sends), apply schema defaults, then validate against the
``openAPIV3Schema`` (with ``jsonschema``) and report failures as 422 field errors worded like the server's.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import jsonschema

from peerbot.testing.kubernetes import errors, names, timefmt
from peerbot.testing.kubernetes.errors import FieldError

#: ValidateAnnotations: the total size of all annotation keys and values (TotalAnnotationSizeLimitB).
ANNOTATIONS_SIZE_LIMIT: Final = 256 * 1024

#: The fields of ObjectMeta; anything else under ``metadata`` is dropped (pruned) by the server.
OBJECT_META_FIELDS: Final = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


def field_path(parts: Iterable[str | int]) -> str:
    """``spec.containers[0].image`` from ``["spec", "containers", 0, "image"]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def validate_metadata(meta: Mapping[str, Any], name_rule: Any, *, generated: bool) -> list[FieldError]:
    """``ValidateObjectMeta``: name, labels, annotations, finalizers, ownerReferences."""
    problems: list[FieldError] = []
    name = meta.get("name")
    where = "metadata.generateName" if generated else "metadata.name"
    if not name:
        problems.append(errors.required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        problems.append(errors.invalid(where, name, "must be a string"))
    else:
        problems.extend(
            errors.invalid(where, name if not generated else meta.get("generateName"), msg)
            for msg in name_rule(name)
        )
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        problems.append(errors.invalid("metadata.labels", labels, "must be a map of strings"))
    else:
        for key, value in labels.items():
            problems.extend(errors.invalid("metadata.labels", key, msg) for msg in names.qualified_name(key))
            if not isinstance(value, str):
                problems.append(errors.invalid("metadata.labels", value, "label values must be strings"))
            else:
                problems.extend(
                    errors.invalid("metadata.labels", value, msg) for msg in names.label_value(value)
                )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        problems.append(errors.invalid("metadata.annotations", annotations, "must be a map of strings"))
    else:
        size = 0
        for key, value in annotations.items():
            problems.extend(
                errors.invalid("metadata.annotations", key, msg) for msg in names.qualified_name(key.lower())
            )
            if not isinstance(value, str):
                problems.append(
                    errors.invalid("metadata.annotations", value, "annotation values must be strings")
                )
            else:
                size += len(key) + len(value.encode())
        if size > ANNOTATIONS_SIZE_LIMIT:
            problems.append(errors.too_long("metadata.annotations", ANNOTATIONS_SIZE_LIMIT))
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        where = f"metadata.finalizers[{index}]"
        if not isinstance(finalizer, str):
            problems.append(errors.invalid(where, finalizer, "must be a string"))
        else:
            problems.extend(errors.invalid(where, finalizer, msg) for msg in names.qualified_name(finalizer))
    controllers: list[str] = []
    for reference in meta.get("ownerReferences") or []:
        for key, what in (("apiVersion", "version"), ("kind", "kind"), ("name", "name"), ("uid", "uid")):
            if not reference.get(key):
                problems.append(
                    errors.invalid(f"metadata.ownerReferences.{key}", "", f"{what} must not be empty")
                )
        if reference.get("controller"):
            controllers.append(f"{reference.get('kind')}/{reference.get('name')}")
    if len(controllers) > 1:
        problems.append(
            errors.invalid(
                "metadata.ownerReferences",
                meta.get("ownerReferences"),
                'Only one reference can have Controller set to true. Found "true" in references for '
                + " and ".join(controllers),
            )
        )
    return problems


# --- custom resources: pruning, defaulting, schema validation --------------------------------------------


def prune(
    value: Any,
    schema: Mapping[str, Any],
    path: tuple[str | int, ...],
    unknown: list[str],
    *,
    root: bool = False,
) -> Any:
    """Drop what the structural schema does not declare; note each dropped field in ``unknown``."""
    if isinstance(value, dict):
        if root or schema.get("x-kubernetes-embedded-resource"):
            for key in ("apiVersion", "kind"):
                if key in value and not isinstance(value[key], str):
                    unknown.append(field_path((*path, key)))
            if isinstance(value.get("metadata"), dict):
                meta = value["metadata"]
                for key in [key for key in meta if key not in OBJECT_META_FIELDS]:
                    unknown.append(field_path((*path, "metadata", key)))
                    del meta[key]
        properties: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            if (root or schema.get("x-kubernetes-embedded-resource")) and key in {
                "apiVersion",
                "kind",
                "metadata",
            }:
                continue
            child = value[key]
            if key in properties:
                sub = properties[key]
            elif isinstance(additional, Mapping):
                sub = additional
            elif preserve or additional is True:
                continue
            else:
                unknown.append(field_path((*path, key)))
                del value[key]
                continue
            if child is None and not sub.get("nullable"):
                del value[key]
                continue
            value[key] = prune(child, sub, (*path, key), unknown)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(item, schema["items"], (*path, index), unknown) for index, item in enumerate(value)]
    return value


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Set ``default`` values of absent properties (structural schema defaulting)."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key in value:
                value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (as CRDs write it) to JSON Schema draft 4 for ``jsonschema``."""
    if isinstance(schema, list):
        return [_to_json_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "default", "example", "externalDocs"}:
            continue
        if key in {"properties", "patternProperties", "definitions"}:
            result[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "not", "allOf", "anyOf", "oneOf", "additionalItems"}:
            result[key] = _to_json_schema(value)
        else:
            result[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    return result


_FORMATS = jsonschema.FormatChecker(formats=())


def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or timefmt.parse(value) is not None


def _is_date(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_base64(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


for _format, _checker in (
    ("date-time", _is_date_time),
    ("date", _is_date),
    ("uuid", _is_uuid),
    ("byte", _is_base64),
):
    _FORMATS.checks(_format)(_checker)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _field_error(error: jsonschema.ValidationError) -> list[FieldError]:
    path = field_path(error.absolute_path) or "<nil>"
    value = error.instance
    rule = error.validator_value
    match error.validator:
        case "required":
            missing = [key for key in rule if isinstance(value, Mapping) and key not in value]
            base = field_path(error.absolute_path)
            return [errors.required(f"{base}.{key}" if base else key) for key in missing]
        case "type":
            expected = rule if isinstance(rule, str) else next(iter(rule), "")
            detail = f"{path} in body must be of type {expected}: {json.dumps(_type_name(value))}"
            return [errors.invalid(path, value, detail)]
        case "pattern":
            return [errors.invalid(path, value, f"{path} in body should match '{rule}'")]
        case "enum":
            return [errors.not_supported(path, value, [str(item) for item in rule])]
        case "minimum":
            exclusive = bool(error.schema.get("exclusiveMinimum"))
            comparison = "greater than" if exclusive else "greater than or equal to"
            return [errors.invalid(path, value, f"{path} in body should be {comparison} {rule}")]
        case "maximum":
            exclusive = bool(error.schema.get("exclusiveMaximum"))
            comparison = "less than" if exclusive else "less than or equal to"
            return [errors.invalid(path, value, f"{path} in body should be {comparison} {rule}")]
        case "minLength":
            return [errors.invalid(path, value, f"{path} in body should be at least {rule} chars long")]
        case "maxLength":
            return [errors.FieldError(errors.TOO_LONG, path, detail=f"may not be more than {rule} bytes")]
        case "minItems":
            return [errors.invalid(path, value, f"{path} in body should have at least {rule} items")]
        case "maxItems":
            return [
                errors.FieldError(
                    ("FieldValueTooMany", "Too many"), path, len(value), f"must have at most {rule} items"
                )
            ]
        case "format":
            return [
                errors.invalid(path, value, f"{path} in body must be of type {rule}: {json.dumps(value)}")
            ]
        case _:
            return [errors.invalid(path, value, error.message)]


class SchemaValidator:
    """A custom resource version's ``openAPIV3Schema``, ready to prune, default and validate objects."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = copy.deepcopy(dict(schema))
        self._validator = jsonschema.Draft4Validator(_to_json_schema(self.schema), format_checker=_FORMATS)

    def prune_and_default(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A pruned, defaulted copy of ``obj`` and the paths of the unknown fields that were dropped."""
        unknown: list[str] = []
        pruned = prune(copy.deepcopy(obj), self.schema, (), unknown, root=True)
        return apply_defaults(pruned, self.schema), unknown

    def validate(self, obj: Mapping[str, Any]) -> list[FieldError]:
        """The schema violations of ``obj`` as field errors, in a stable order."""
        problems: list[FieldError] = []
        for error in sorted(
            self._validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]
        ):
            problems.extend(_field_error(error))
        return problems


def strict_decoding_message(kind: str, version: str, unknown: Sequence[str]) -> str:
    """The 400 message for unknown fields under ``?fieldValidation=Strict``."""
    listed = ", ".join(f'unknown field "{path}"' for path in unknown)
    return f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {listed}'
