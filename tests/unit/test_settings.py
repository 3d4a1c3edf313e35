"""Settings: read from the environment, and a bad one stops start-up with a line saying how to fix it."""

import pytest

from peerbot.cli import main
from peerbot.settings import (
    DispatcherSettings,
    OperatorSettings,
    SettingsError,
    WorkerSettings,
    load_settings,
)

BOT = "xoxb-1-2-abc"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "ANTHROPIC_API_KEY",
        "GITHUB_TOKEN",
        "WORKER_CPU",
        "WORKER_MEMORY",
        "SESSION_TIMEOUT_MINUTES",
        "PORT",
        "LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_deployment_guide(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "a" * 36)
    worker = load_settings(WorkerSettings)
    assert worker.slack_trigger_phrase == "@peerbotai"
    assert worker.github_organization == "peerbot-community"
    assert worker.gcs_bucket_name == "peerbot-conversations-prod"
    assert worker.session_timeout_minutes == 5
    operator = load_settings(OperatorSettings)
    assert (operator.worker_cpu, operator.worker_memory) == ("2000m", "4Gi")


def test_missing_setting_names_the_variable_and_the_fix():
    with pytest.raises(SettingsError) as caught:
        load_settings(WorkerSettings)
    problems = caught.value.problems
    assert any(p.startswith("SLACK_BOT_TOKEN is missing: set SLACK_BOT_TOKEN") for p in problems)
    assert any("ANTHROPIC_API_KEY is missing" in p and "console.anthropic.com" in p for p in problems)
    assert any("GITHUB_TOKEN is missing" in p for p in problems)


def test_malformed_setting_is_named_without_its_value(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxp-user-token-secret")
    monkeypatch.setenv("WORKER_MEMORY", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings(DispatcherSettings)
    text = str(caught.value)
    assert "SLACK_BOT_TOKEN is not valid (a bot token starts with xoxb-)" in text
    assert "xoxp-user-token-secret" not in text
    with pytest.raises(SettingsError, match=r"WORKER_MEMORY is not valid \(not a Kubernetes quantity\)"):
        load_settings(OperatorSettings)


def test_dispatcher_needs_socket_mode_or_http_mode(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT)
    settings = load_settings(DispatcherSettings)
    with pytest.raises(
        SettingsError, match="SLACK_APP_TOKEN is missing: Socket Mode needs an app-level token"
    ):
        settings.check_mode()
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s3cret")
    load_settings(DispatcherSettings).check_mode()


def test_numbers_out_of_range(monkeypatch):
    monkeypatch.setenv("SESSION_TIMEOUT_MINUTES", "0")
    with pytest.raises(SettingsError, match="SESSION_TIMEOUT_MINUTES is not valid"):
        load_settings(OperatorSettings)


def test_cli_prints_one_line_per_problem(monkeypatch, capsys):
    monkeypatch.setattr("peerbot.cli._load", lambda part: lambda args: load_settings(WorkerSettings))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peerbot worker cannot start:")
    assert "  - SLACK_BOT_TOKEN is missing" in err
