"""``peerbot worker``: run one turn of one Conversation, write the result, exit with its code.

Imports are lazy on purpose: the person should see the status message change within about a second of
the pod starting, so the heavy libraries (the Anthropic SDK, PyGithub, google-cloud-storage) load only
after the first Slack edit.

Exit codes (:class:`peerbot.result.ExitCode`): 0 answered, 10 paused at the time limit, 1 failed,
2 a missing or malformed setting (nothing attempted), 143 stopped by SIGTERM (no result: the operator
decides whether to retry).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from peerbot import constants
from peerbot.result import ErrorKind, ExitCode, Outcome, TurnError, TurnResult
from peerbot.settings import SettingsError, WorkerSettings, load_settings
from peerbot.worker.pointers import TurnPointers, load_pointers
from peerbot.worker.turn import Dependencies, Turn, exit_code, write_result


async def execute(
    settings: WorkerSettings,
    pointers: TurnPointers,
    deps: Dependencies | None = None,
    *,
    handle_signals: bool = False,
) -> int:
    """Run one turn, write its result document, and return the exit code."""
    turn = Turn(settings, pointers, deps)
    if handle_signals:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, turn.terminate)
    result = await turn.run()
    if result is not None:
        write_result(settings.peerbot_result_file, result)
    return exit_code(result)


def _settings_failure(error: SettingsError) -> int:
    print("peerbot worker cannot start:", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)
    result = TurnResult(
        outcome=Outcome.FAILED,
        error=TurnError(kind=ErrorKind.INTERNAL, message="worker settings: " + "; ".join(error.problems)),
    )
    # The settings may be what is wrong, so the path comes straight from the environment, as documented.
    path = Path(os.environ.get("PEERBOT_RESULT_FILE") or constants.DEFAULT_RESULT_FILE)
    write_result(path, result)
    return int(ExitCode.SETTINGS)


def _ensure_home() -> None:
    """In a pod, HOME lies on the empty workspace volume (the root file system is read-only): make it."""
    home = os.environ.get("HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``peerbot worker`` (see :mod:`peerbot.cli`); ``--idle`` waits for a claim first."""
    if getattr(args, "idle", False):
        from peerbot.worker.idle import run_idle

        try:
            return run_idle()
        except SettingsError as error:
            return _settings_failure(error)
    try:
        settings = load_settings(WorkerSettings)
        pointers = load_pointers()
    except SettingsError as error:
        return _settings_failure(error)
    from peerbot.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, service="peerbot-worker")
    _ensure_home()
    deps = Dependencies(env=dict(os.environ))
    return asyncio.run(execute(settings, pointers, deps, handle_signals=True))
