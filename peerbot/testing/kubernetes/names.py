"""Names, label keys and label values, checked with the API server's own rules and messages.

Taken from ``k8s.io/apimachinery/pkg/util/validation``: each check returns the list of messages the server
would put after ``Invalid value: "...":``; an empty list means the value is fine.
"""

from __future__ import annotations

import re
from typing import Final

#: RFC 1123 label: at most 63 characters (DNS1123LabelMaxLength).
DNS1123_LABEL_MAX: Final = 63
#: RFC 1123 subdomain: at most 253 characters (DNS1123SubdomainMaxLength).
DNS1123_SUBDOMAIN_MAX: Final = 253
#: The name part of a qualified name (label keys, finalizers): at most 63 characters.
QUALIFIED_NAME_MAX: Final = 63
#: A label value: at most 63 characters.
LABEL_VALUE_MAX: Final = 63

_LABEL_FMT: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT: Final = rf"{_LABEL_FMT}(\.{_LABEL_FMT})*"
_QUALIFIED_FMT: Final = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT: Final = rf"({_QUALIFIED_FMT})?"
_CONFIG_KEY_FMT: Final = r"[-._a-zA-Z0-9]+"
_ENV_VAR_FMT: Final = r"[-._a-zA-Z][-._a-zA-Z0-9]*"

_LABEL_RE: Final = re.compile(f"^{_LABEL_FMT}$")
_SUBDOMAIN_RE: Final = re.compile(f"^{_SUBDOMAIN_FMT}$")
_QUALIFIED_RE: Final = re.compile(f"^{_QUALIFIED_FMT}$")
_LABEL_VALUE_RE: Final = re.compile(f"^{_LABEL_VALUE_FMT}$")
_CONFIG_KEY_RE: Final = re.compile(f"^{_CONFIG_KEY_FMT}$")
_ENV_VAR_RE: Final = re.compile(f"^{_ENV_VAR_FMT}$")


def _max_len(limit: int) -> str:
    return f"must be no more than {limit} characters"


def dns1123_label(value: str) -> list[str]:
    """``IsDNS1123Label``: namespaces, container names."""
    problems: list[str] = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(_max_len(DNS1123_LABEL_MAX))
    if not _LABEL_RE.match(value):
        problems.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
            "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
            f"validation is '{_LABEL_FMT}')"
        )
    return problems


def dns1123_subdomain(value: str) -> list[str]:
    """``IsDNS1123Subdomain``: the names of most objects, custom resources included."""
    problems: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(_max_len(DNS1123_SUBDOMAIN_MAX))
    if not _SUBDOMAIN_RE.match(value):
        problems.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
            f"validation is '{_SUBDOMAIN_FMT}')"
        )
    return problems


def qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: label and annotation keys, finalizers (``[prefix/]name``)."""
    problems: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend(f"prefix part {message}" for message in dns1123_subdomain(prefix))
    else:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end "
            "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            f"validation is '{_QUALIFIED_FMT}') with an optional DNS subdomain prefix and '/' (e.g. "
            "'example.com/MyName')"
        ]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > QUALIFIED_NAME_MAX:
        problems.append(f"name part {_max_len(QUALIFIED_NAME_MAX)}")
    if name and not _QUALIFIED_RE.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an "
            "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is "
            f"'{_QUALIFIED_FMT}')"
        )
    return problems


def label_value(value: str) -> list[str]:
    """``IsValidLabelValue``: empty, or at most 63 alphanumerics with ``-_.`` inside."""
    problems: list[str] = []
    if len(value) > LABEL_VALUE_MAX:
        problems.append(_max_len(LABEL_VALUE_MAX))
    if not _LABEL_VALUE_RE.match(value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and "
            "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
            f"regex used for validation is '{_LABEL_VALUE_FMT}')"
        )
    return problems


def config_key(value: str) -> list[str]:
    """``IsConfigMapKey``: keys of Secret and ConfigMap data."""
    problems: list[str] = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(_max_len(DNS1123_SUBDOMAIN_MAX))
    if not _CONFIG_KEY_RE.match(value):
        problems.append(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', "
            " or "
            f"'KEY_NAME',  or 'key-name', regex used for validation is '{_CONFIG_KEY_FMT}')"
        )
    if value in {".", ".."}:
        problems.append(f"must not be '{value}'")
    return problems


def env_var_name(value: str) -> list[str]:
    """``IsEnvVarName``: container environment variable names."""
    if _ENV_VAR_RE.match(value):
        return []
    return [
        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', "
        "and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex "
        "used "
        f"for validation is '{_ENV_VAR_FMT}')"
    ]


__all__ = [
    "config_key",
    "dns1123_label",
    "dns1123_subdomain",
    "env_var_name",
    "label_value",
    "qualified_name",
]
