"""Label and field selectors for list, watch and deletecollection, with the server's parse errors.

Label selectors follow ``k8s.io/apimachinery/pkg/labels`` (``a=b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a``, ``!a``, ``a>1``); field selectors follow ``k8s.io/apimachinery/pkg/fields``
(``a=b``, ``a==b``, ``a!=b`` with backslash escapes). Which fields a resource can be selected by is
decided by the resource (see :mod:`.behaviours`); an unknown one is a 400, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from peerbot.testing.kubernetes import errors, names

_SET_RE: Final = re.compile(r"^\s*(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EQ_RE: Final = re.compile(r"^\s*(?P<key>[^\s!=<>(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=<>(),]*)\s*$")
_CMP_RE: Final = re.compile(r"^\s*(?P<key>[^\s!=<>(),]+)\s*(?P<op>[<>])\s*(?P<value>-?\d+)\s*$")
_EXISTS_RE: Final = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=<>(),]+)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels satisfies this requirement (``labels.Requirement.Matches``)."""
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case ">" | "<":
                try:
                    number = int(value or "")
                except ValueError:
                    return False
                bound = int(self.values[0])
                return number > bound if self.op == ">" else number < bound
        return False  # pragma: no cover - the parser builds only the operators above


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector: all requirements must match."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with these labels is selected."""
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    @classmethod
    def from_match(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """A ``metav1.LabelSelector`` (``matchLabels``/``matchExpressions``) as a selector."""
        selector = selector or {}
        requirements = [
            Requirement(key, "=", (str(value),)) for key, value in (selector.get("matchLabels") or {}).items()
        ]
        operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for expression in selector.get("matchExpressions") or []:
            operator = operators.get(str(expression.get("operator")), "in")
            requirements.append(
                Requirement(str(expression.get("key")), operator, tuple(expression.get("values") or ()))
            )
        return cls(tuple(requirements))


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> None:
    problems = names.qualified_name(key)
    if problems:
        raise errors.bad_request(
            f"unable to parse requirement: key: Invalid value: {key!r}: {'; '.join(problems)}"
        )


def _check_value(value: str) -> None:
    problems = names.label_value(value)
    if problems:
        raise errors.bad_request(
            f"unable to parse requirement: values[0][key]: Invalid value: {value!r}: {'; '.join(problems)}"
        )


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``?labelSelector=``; raise a 400 ``ApiError`` the way the server does for a bad one."""
    if not text or not text.strip():
        return LabelSelector()
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        if match := _SET_RE.match(part):
            values = tuple(value.strip() for value in match["values"].split(",") if value.strip())
            if not values and match["op"] == "in":
                raise errors.bad_request(
                    f"unable to parse requirement: found '{part.strip()}', expected: values"
                )
            key = match["key"]
            _check_key(key)
            for value in values:
                _check_value(value)
            requirements.append(Requirement(key, match["op"], values))
        elif match := _CMP_RE.match(part):
            _check_key(match["key"])
            requirements.append(Requirement(match["key"], match["op"], (match["value"],)))
        elif match := _EQ_RE.match(part):
            _check_key(match["key"])
            _check_value(match["value"])
            operator = "!=" if match["op"] == "!=" else "="
            requirements.append(Requirement(match["key"], operator, (match["value"],)))
        elif match := _EXISTS_RE.match(part):
            _check_key(match["key"])
            requirements.append(Requirement(match["key"], "!" if match["neg"] else "exists"))
        else:
            raise errors.bad_request(
                f"unable to parse requirement: found '{part.strip()}', expected: identifier"
            )
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class FieldRequirement:
    """One ``field=value`` or ``field!=value`` term of a field selector."""

    field: str
    value: str
    negate: bool


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector: all terms must hold."""

    terms: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether an object with these selectable field values is selected."""
        for term in self.terms:
            equal = fields.get(term.field) == term.value
            if equal == term.negate:
                return False
        return True

    def check_supported(self, supported: Callable[[str], bool], describe: str) -> None:
        """Refuse selection by a field the resource does not offer (400, as the server does)."""
        for term in self.terms:
            if not supported(term.field):
                raise errors.bad_request(describe.format(field=term.field))


def _split_escaped(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parse ``?fieldSelector=``; raise a 400 ``ApiError`` for a term without an operator."""
    if not text or not text.strip():
        return FieldSelector()
    terms: list[FieldRequirement] = []
    for part in _split_escaped(text, ","):
        for operator, negate in (("!=", True), ("==", False), ("=", False)):
            if operator in part:
                field, value = part.split(operator, 1)
                terms.append(FieldRequirement(field.strip(), value.strip(), negate))
                break
        else:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
    return FieldSelector(tuple(terms))
