"""``peerbot local`` with tokens Slack refuses: one line naming the token and what to check, exit status 1.

The tokens have the right shape (so the settings check passes); the Slack stand-in refuses them as Slack
does (``invalid_auth``), for the bot token at ``auth.test`` and for the app-level token when Socket Mode
opens its connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerbot.testing.slack import SlackStandIn


def peerbot_local(folder: Path, slack: SlackStandIn, **tokens: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "SLACK_API_URL": slack.api_url,
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_APP_TOKEN": slack.app_token,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "GITHUB_TOKEN": "ghp_test",
        "PORT": "0",
        **tokens,
    }
    return subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "local"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("token", "value"),
    [("SLACK_BOT_TOKEN", "xoxb-0-0-revoked"), ("SLACK_APP_TOKEN", "xapp-0-A0-0-revoked")],
)
def test_a_token_slack_refuses_stops_it_with_the_token_named(
    tmp_path: Path, slack_standin: SlackStandIn, token: str, value: str
) -> None:
    done = peerbot_local(tmp_path, slack_standin, **{token: value})
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"peerbot local cannot start: Slack refused {token} (invalid_auth)"), done.stderr[
        -3000:
    ]
    assert "docs/local.md" in last
    assert value not in done.stderr
    assert "Traceback" not in done.stderr
