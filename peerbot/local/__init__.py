"""``peerbot local``: Peerbot on one machine, without a cluster (``docs/local.md``).

The real dispatcher receives Slack events over Socket Mode and records each thread's Conversation as a
JSON file (:mod:`.store`); the local runner (:mod:`.runner`) plans every Conversation with the operator's
own pure planner and runs each turn as a ``peerbot worker`` process (:mod:`.jobs`), with the same time
limit, pause and outcome rules as a worker Job; sessions live in a folder. :mod:`.settings` checks every
setting first; :mod:`.main` wires the parts together and stops them cleanly.

Only the settings are imported before they are known to be good, so a missing token is reported at
once, without loading the dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Final

from peerbot.local.settings import ENV_FILE, LocalSetupError, load_config, read_env_file

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
#: A missing or malformed setting (as for every ``peerbot`` sub-command).
EXIT_SETTINGS: Final = 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``peerbot local`` (see :mod:`peerbot.cli`)."""
    env_file = Path.cwd() / ENV_FILE
    read_env_file(env_file)
    try:
        config = load_config(env_file)
    except LocalSetupError as error:
        print(error, file=sys.stderr)
        return EXIT_SETTINGS
    from peerbot.logs import configure_logging

    configure_logging(config.local.log_level, config.local.log_format, service="peerbot-local")
    from peerbot.local.main import LocalStartError, serve

    try:
        asyncio.run(serve(config))
    except LocalStartError as error:
        print(f"peerbot local cannot start: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


__all__ = ["run"]
