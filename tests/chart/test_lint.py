"""The chart as a chart: `helm lint --strict`, a comment on every value, a schema that catches mistakes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART, EXAMPLE_VALUES, EXAMPLES, helm, render_text, values_args

VALUES_FILE = CHART / "values.yaml"
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


@pytest.mark.parametrize("values_file", [None, *EXAMPLE_VALUES])
def test_helm_lint_strict(values_file):
    result = helm("lint", "--strict", str(CHART), *values_args([values_file] if values_file else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def _leaf_key_lines(lines: list[str]) -> list[int]:
    """Indexes of the lines that set a value (not the ones that only open a nested mapping)."""
    leaves = []
    for index, line in enumerate(lines):
        match = _KEY_LINE.match(line)
        if not match:
            continue
        rest = match["rest"].split("#")[0].strip()
        if rest:
            leaves.append(index)
            continue
        following = next((x for x in lines[index + 1 :] if x.strip() and not x.lstrip().startswith("#")), "")
        deeper = len(following) - len(following.lstrip()) > len(match["indent"])
        if not deeper or following.lstrip().startswith("- "):
            leaves.append(index)  # an empty value or a block list: still a value
    return leaves


def test_every_value_has_a_comment():
    lines = VALUES_FILE.read_text().splitlines()
    missing = []
    for index in _leaf_key_lines(lines):
        previous = lines[index - 1].strip() if index else ""
        if not previous.startswith("#"):
            missing.append(lines[index].strip())
    assert not missing, f"values.yaml keys without a comment right above them: {missing}"


def test_comment_checker_sees_leaves():
    """The checker above must not pass vacuously: it finds the leaves of a known snippet."""
    snippet = ["a:", "  b: 1", "  c:", "    - x", "d:", "  e:", "    f: {}"]
    assert [snippet[i].strip() for i in _leaf_key_lines(snippet)] == ["b: 1", "c:", "f: {}"]


def test_examples_only_use_known_keys():
    """Each example must be a subset of values.yaml (the schema enforces it too; this names the key)."""
    defaults = yaml.safe_load(VALUES_FILE.read_text())

    def walk(example: dict[str, Any], known: dict[str, Any], path: str) -> None:
        for key, value in example.items():
            assert key in known, f"{path}{key} is not a chart value"
            if isinstance(value, dict) and isinstance(known[key], dict) and known[key]:
                walk(value, known[key], f"{path}{key}.")

    for name in EXAMPLE_VALUES:
        walk(yaml.safe_load((EXAMPLES / name).read_text()), defaults, f"{name}: ")


@pytest.mark.parametrize(
    ("set_values", "expected"),
    [
        ({"dispatcher.replicas": "3"}, "replicas"),  # a typo of replicaCount
        ({"slack.mode": "websocket"}, "mode"),
        ({"secrets.slackBotToken": "xoxp-user-token"}, "slackBotToken"),
        ({"secrets.slackAppToken": "xoxb-not-an-app-token"}, "slackAppToken"),
        ({"worker.resources.cpu": "two"}, "cpu"),
        ({"worker.timeoutMinutes": "0"}, "timeoutMinutes"),
        ({"config.gcsBucketName": "Not_A_Bucket"}, "gcsBucketName"),
        ({"worker.serviceAccount.gcpServiceAccount": "someone@gmail.com"}, "gcpServiceAccount"),
        ({"dispatcher.image.digest": "latest"}, "digest"),
    ],
)
def test_schema_rejects_mistakes(set_values, expected):
    result = render_text(set_values=set_values)
    assert result.returncode != 0, f"{set_values} rendered, but values.schema.json should refuse it"
    assert expected in result.stderr


@pytest.mark.parametrize(
    "set_values",
    [
        {"autoscaling.enabled": "true", "autoscaling.maxReplicas": "11"},
        {"dispatcher.replicaCount": "11"},
    ],
)
def test_socket_mode_refuses_more_than_ten_dispatchers(set_values):
    result = render_text(set_values=set_values)
    assert result.returncode != 0
    assert "at most 10 Socket Mode connections" in result.stderr


def test_http_mode_may_run_more_than_ten_dispatchers():
    result = render_text(set_values={"slack.mode": "http", "dispatcher.replicaCount": "12"})
    assert result.returncode == 0, result.stderr


def _notes(*args: str) -> str:
    result = helm("install", "peerbot", str(CHART), "--namespace", "peerbot", "--dry-run=client", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_warn_about_missing_tokens():
    notes = _notes()
    assert (
        "WARNING: the chart's Secret has no value for: secrets.slackBotToken, secrets.slackAppToken" in notes
    )
    assert "kubectl get conversations -n peerbot" in notes
    assert "WARNING" not in _notes("--set", "secrets.existingSecret=peerbot-secrets")


def test_notes_give_the_request_url_in_http_mode():
    notes = _notes(
        "--set",
        "slack.mode=http",
        "--set",
        "dispatcher.ingress.enabled=true",
        "--set",
        "dispatcher.ingress.host=peerbot.example.com",
    )
    assert "https://peerbot.example.com/slack/events" in notes
    assert "secrets.slackSigningSecret" in notes
