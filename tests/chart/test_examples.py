"""The example Conversations against the CRD's own schema (good ones pass, bad ones fail), and the External
Secrets example against what the chart reads."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from peerbot.naming import conversation_name
from peerbot.operator.jobs import WORKER_SECRET_KEYS
from tests.chart.rendering import CHART, EXAMPLES

CRD = CHART / "crds" / "conversations.yaml"
CONVERSATIONS = EXAMPLES / "conversations"
GOOD = sorted(CONVERSATIONS.glob("good-*.yaml"))
BAD = sorted(CONVERSATIONS.glob("bad-*.yaml"))
#: RFC 3339 date-time, as the API server checks `format: date-time` (jsonschema only checks it with an
#: optional package, so the check is spelled out here).
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports non-strings
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(_date_time)
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"], format_checker=checker)


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def test_there_are_good_and_bad_examples():
    assert len(GOOD) >= 3
    assert len(BAD) >= 5


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_conversation_is_accepted(validator, path):
    conversation = _load(path)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(conversation)]
    assert not errors, errors
    assert conversation["apiVersion"] == "peerbot.ai/v1"
    assert conversation["kind"] == "Conversation"
    spec = conversation["spec"]
    expected = conversation_name(spec["team"], spec["channel"], spec["threadTs"])
    assert conversation["metadata"]["name"] == expected


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_conversation_is_refused(validator, path):
    conversation = _load(path)
    errors = list(validator.iter_errors(conversation))
    assert errors, f"{path.name} should be refused by the CRD's schema"
    # Each bad example is wrong in exactly one way (so it tests what its comment says).
    assert len(errors) == 1, [e.message for e in errors]


def test_date_time_check_is_strict(validator):
    assert _date_time("2023-11-14T22:30:00Z")
    assert _date_time("2023-11-14T22:30:00.5+01:00")
    assert not _date_time("2023-11-14 22:30")
    assert not _date_time("2023-13-14T22:30:00Z")


EXTERNAL_SECRETS = EXAMPLES / "external-secrets.yaml"


def test_external_secrets_example_fills_the_secret_the_chart_reads():
    documents = [d for d in yaml.safe_load_all(EXTERNAL_SECRETS.read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert set(by_kind) == {"ServiceAccount", "SecretStore", "ExternalSecret"}
    kubernetes_validate.validate(by_kind["ServiceAccount"], "1.33.0", strict=True)
    external = by_kind["ExternalSecret"]
    assert external["apiVersion"] == "external-secrets.io/v1"
    assert external["spec"]["secretStoreRef"]["name"] == by_kind["SecretStore"]["metadata"]["name"]
    production = yaml.safe_load((EXAMPLES / "production.yaml").read_text())
    assert external["spec"]["target"]["name"] == production["secrets"]["existingSecret"]
    keys = {item["secretKey"] for item in external["spec"]["data"]}
    assert set(WORKER_SECRET_KEYS.values()) <= keys
    assert keys == set(WORKER_SECRET_KEYS.values()) | {"slack-app-token", "slack-signing-secret"}
    store = by_kind["SecretStore"]["spec"]["provider"]["gcpsm"]["auth"]["workloadIdentity"]
    assert store["serviceAccountRef"]["name"] == by_kind["ServiceAccount"]["metadata"]["name"]
