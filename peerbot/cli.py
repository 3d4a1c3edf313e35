"""The ``peerbot`` command: one sub-command per part, plus the single-machine ones.

Each sub-command loads its own settings (a bad setting stops it with a line naming the variable and the
fix, exit status 2), sets up logging, and hands over to its part. Parts are imported lazily so that
``peerbot worker`` does not pay for the dispatcher's imports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from peerbot import __version__
from peerbot.settings import SettingsError

EXIT_SETTINGS = 2
EXIT_NOT_BUILT = 3


def _not_built(part: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        print(
            f"peerbot {part} is not built yet ({issue}). "
            "Run `peerbot --help` to see what is available today.",
            file=sys.stderr,
        )
        return EXIT_NOT_BUILT

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerbot",
        description="Peerbot: a coding agent in Slack, run on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"peerbot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    parts: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("dispatcher", "receive Slack events and record them as Conversations", _load("dispatcher")),
        ("operator", "turn Conversations into worker Jobs (kopf)", _load("operator")),
        ("worker", "run one turn of one Conversation, then exit", _load("worker")),
        ("local", "run Peerbot on this machine without a cluster", _load("local")),
        ("demo", "show the whole flow offline, with local stand-ins and no accounts", _load("demo")),
        ("doctor", "check a deployment or a local set-up end to end and say what is wrong", _load("doctor")),
    ]
    for name, help_text, run in parts:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        if name == "doctor":
            sub.add_argument("--only", help="run only these checks (comma-separated, e.g. slack,scopes)")
            sub.add_argument("--skip", help="leave these checks out (comma-separated)")
            sub.add_argument("--json", action="store_true", help="print the findings as JSON")
        if name == "worker":
            sub.add_argument(
                "--idle",
                action="store_true",
                help="warm up, then wait for the operator's pool to claim this worker for one turn "
                "(see docs/warm-workers.md)",
            )
        if name == "demo":
            from peerbot.demo import add_arguments

            add_arguments(sub)
        if name == "operator":
            sub.add_argument(
                "--liveness",
                default=None,
                help="also serve kopf's own liveness endpoint at this URL (default: none; the operator "
                "serves /health, /ready and /metrics on OPERATOR_PORT)",
            )
    return parser


def _load(part: str) -> Callable[[argparse.Namespace], int]:
    """Find the part's ``run(args) -> int`` lazily, or say plainly that it is not built yet."""
    issues = {
        "dispatcher": "the dispatcher issue",
        "operator": "the operator issue",
        "worker": "the worker issue",
        "local": "the one-machine issue",
        "demo": "the one-machine issue",
        "doctor": "the production issue",
    }

    def run(args: argparse.Namespace) -> int:
        import importlib

        module_name = {
            "dispatcher": "peerbot.dispatcher.main",
            "operator": "peerbot.operator.main",
            "worker": "peerbot.worker.main",
            "local": "peerbot.local",
            "demo": "peerbot.demo",
            "doctor": "peerbot.doctor",
        }[part]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            return _not_built(part, issues[part])(args)
        result: int = module.run(args)
        return result

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peerbot`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args))
    except SettingsError as error:
        print(f"peerbot {args.command} cannot start:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_SETTINGS
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
