"""``peerbot local`` with missing or bad settings: one clear message, exit status 2, nothing started.

Run as the command a person types, in a folder of its own (so only that folder's ``.env`` counts), with
an environment holding nothing but what each test gives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerbot.local.settings import LOCAL_REPOSITORIES_NOTE, TOKENS, LocalSetupError, load_config

ALL_TOKENS = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
    "SLACK_APP_TOKEN": "xapp-1-A1-2-abc",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "GITHUB_TOKEN": "ghp_test",
}


def peerbot_local(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), **env}
    return subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "local"],
        cwd=folder,
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_no_tokens_at_all_lists_each_with_where_to_get_it_and_points_to_the_demo(tmp_path: Path) -> None:
    done = peerbot_local(tmp_path, {})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"peerbot local cannot start: set these in the environment or in {tmp_path / '.env'}:"
    for name in TOKENS:
        (line,) = [line for line in lines if line.startswith(f"  - {name}:")]
        assert TOKENS[name] in line
    assert "https://api.slack.com/apps" in done.stderr
    assert "https://console.anthropic.com/settings/keys" in done.stderr
    assert "https://github.com/settings/tokens" in done.stderr
    assert (
        lines[-1] == "No accounts yet? `peerbot demo` shows the whole flow offline and needs none of these."
    )
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / ".peerbot").exists()  # nothing was started or written


def test_the_env_file_fills_in_and_only_what_is_still_missing_is_listed(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"SLACK_BOT_TOKEN={ALL_TOKENS['SLACK_BOT_TOKEN']}\nSLACK_APP_TOKEN='{ALL_TOKENS['SLACK_APP_TOKEN']}'\n"
    )
    done = peerbot_local(tmp_path, {"GITHUB_TOKEN": "ghp_test"})
    assert done.returncode == 2
    listed = [line.split(":")[0].strip(" -") for line in done.stderr.splitlines() if line.startswith("  - ")]
    assert listed == ["ANTHROPIC_API_KEY"]


def test_a_malformed_setting_is_named_with_its_fix_and_the_environment_wins_over_the_env_file(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in ALL_TOKENS.items()))
    done = peerbot_local(
        tmp_path,
        {
            "SLACK_APP_TOKEN": "xoxb-not-an-app-token",
            "MAX_CONCURRENT_JOBS": "-1",
            "SESSION_TIMEOUT_MINUTES": "soon",
        },
    )
    assert done.returncode == 2
    assert done.stderr.startswith("peerbot local cannot start: these settings need fixing:")
    problems = [line for line in done.stderr.splitlines() if line.startswith("  - ")]
    assert any(
        line.startswith("  - SLACK_APP_TOKEN is not valid (an app-level token starts with xapp-)")
        for line in problems
    )
    assert any(line.startswith("  - MAX_CONCURRENT_JOBS is not valid") for line in problems)
    # Checked by both peerbot local and the worker: said once.
    assert sum(line.startswith("  - SESSION_TIMEOUT_MINUTES") for line in problems) == 1
    assert "xoxb-not-an-app-token" not in done.stderr  # a value is never printed
    assert "`peerbot demo`" in done.stderr


def test_without_a_github_token_workers_keep_repositories_in_local_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GITHUB_TOKEN", "REPOSITORY_HOST", "REPOSITORIES_DIR", "PEERBOT_LOCAL_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ALL_TOKENS.items():
        if name != "GITHUB_TOKEN":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PEERBOT_LOCAL_DIR", str(tmp_path / "local"))
    assert "GITHUB_TOKEN" not in TOKENS  # not required
    config = load_config(tmp_path / ".env")
    assert config.worker.repository_host == "local"
    assert config.worker.repositories_dir == tmp_path / "local" / "repositories"

    # When it cannot start for another reason, it says where repositories would be and how to use GitHub.
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "-1")
    with pytest.raises(LocalSetupError) as refused:
        load_config(tmp_path / ".env")
    assert LOCAL_REPOSITORIES_NOTE in str(refused.value)
    assert "https://github.com/settings/tokens" in str(refused.value)

    # Choosing GitHub without a token is a missing token, with both ways out.
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "1")
    monkeypatch.setenv("REPOSITORY_HOST", "github")
    with pytest.raises(LocalSetupError) as missing:
        load_config(tmp_path / ".env")
    assert "  - GITHUB_TOKEN is missing: set GITHUB_TOKEN to a token" in str(missing.value)
    assert "or set REPOSITORY_HOST=local" in str(missing.value)
    assert LOCAL_REPOSITORIES_NOTE not in str(missing.value)
