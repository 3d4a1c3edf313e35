"""The CRD and the pydantic Conversation model describe the same object."""

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from peerbot.conversation import Conversation, ConversationSpec, ConversationStatus, Phase

CRD_PATH = Path(__file__).parents[2] / "charts/peerbot/crds/conversations.yaml"
GOOD_SPEC = {
    "team": "T024BE7LD",
    "channel": "C01ABCDEF",
    "threadTs": "1700000000.123456",
    "user": "U01ABCDEF",
    "requestedTs": "1700000000.123456",
}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _resolve(defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:  # Optional[X] is anyOf [X, null]
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            return {**_resolve(options[0], defs), **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


def _compare(
    model_schema: dict[str, Any], crd_schema: dict[str, Any], defs: dict[str, Any], path: str
) -> None:
    model_schema = _resolve(model_schema, defs)
    model_type = model_schema.get("type") or ("string" if "enum" in model_schema else None)
    assert model_type == crd_schema["type"] or (model_type, crd_schema["type"]) == ("integer", "integer"), (
        path
    )
    if crd_schema.get("format") == "date-time":
        assert model_schema.get("format") == "date-time", path
    if "pattern" in crd_schema or "pattern" in model_schema:
        assert model_schema.get("pattern") == crd_schema.get("pattern"), path
    if "enum" in crd_schema:
        assert sorted(model_schema["enum"]) == sorted(crd_schema["enum"]), path
    if model_type == "object" and "properties" in model_schema:
        assert set(model_schema["properties"]) == set(crd_schema["properties"]), path
        assert set(model_schema.get("required", [])) == set(crd_schema.get("required", [])), path
        for name, sub in model_schema["properties"].items():
            _compare(sub, crd_schema["properties"][name], defs, f"{path}.{name}")
    if model_type == "array":
        _compare(model_schema["items"], crd_schema["items"], defs, f"{path}[]")


@pytest.mark.parametrize(("model", "field"), [(ConversationSpec, "spec"), (ConversationStatus, "status")])
def test_model_and_crd_agree(crd, model, field):
    model_schema = model.model_json_schema(by_alias=True, mode="serialization")
    defs = model_schema.get("$defs", {})
    _compare(model_schema, _schema(crd)["properties"][field], defs, field)


def test_names_and_columns(crd):
    names = crd["spec"]["names"]
    assert crd["spec"]["group"] == "peerbot.ai"
    assert (names["kind"], names["plural"], names["singular"]) == (
        "Conversation",
        "conversations",
        "conversation",
    )
    assert names["shortNames"] == ["conv"]
    assert names["categories"] == ["peerbot"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    for wanted in ("Channel", "User", "Phase", "Turns", "Tokens", "Job", "Age"):
        assert wanted in columns


def test_printer_columns_resolve_on_a_real_object(crd):
    conversation = Conversation(
        metadata={"name": "x", "creationTimestamp": "2026-11-22T04:00:00Z"},
        spec=ConversationSpec.model_validate(GOOD_SPEC),
        status=ConversationStatus(phase=Phase.RUNNING, job="x-t1", turns=1),
    )
    conversation.status.tokens.input = 10
    obj = conversation.to_api() | {"metadata": conversation.metadata}
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column.get("priority"):
            continue
        node: Any = obj
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node[part]
        assert node is not None, column["name"]


def test_good_and_bad_conversations_against_the_crd_schema(crd):
    schema = _schema(crd)
    good = {"apiVersion": "peerbot.ai/v1", "kind": "Conversation", "metadata": {}, "spec": GOOD_SPEC}
    jsonschema.validate(good, schema)
    for bad_spec in (
        {k: v for k, v in GOOD_SPEC.items() if k != "team"},
        GOOD_SPEC | {"threadTs": "yesterday"},
        GOOD_SPEC | {"repository": "not a repo"},
        GOOD_SPEC | {"channel": "general"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "spec": bad_spec}, schema)
        with pytest.raises(ValidationError):
            ConversationSpec.model_validate(bad_spec)


def test_spec_round_trips_in_camel_case():
    spec = ConversationSpec.model_validate(GOOD_SPEC | {"repository": "acme/api"})
    assert spec.to_api() == GOOD_SPEC | {"repository": "acme/api"}
    assert spec.thread_ts == "1700000000.123456"
