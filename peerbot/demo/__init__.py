"""``peerbot demo``: the whole flow offline, on local stand-ins, with no account, in about ten seconds.

A person mentions Peerbot in a Slack thread; the real dispatcher, operator and worker answer it, and a
reply in the thread continues the same session. Slack, Kubernetes, GitHub, Cloud Storage and Claude are
the local stand-ins of :mod:`peerbot.testing`; the demo plays the kubelet, running each worker Job as a
local ``peerbot worker`` process. ``docs/demo.md`` tells what happens and what each part is.

- :mod:`peerbot.demo.flow`: the stages (:class:`Demo`);
- :mod:`peerbot.demo.stack`: starting and stopping everything;
- :mod:`peerbot.demo.story`: alice's repository, her messages and Claude's scripted replies;
- :mod:`peerbot.demo.transcript`: the output, and the Slack thread shown live.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peerbot.demo.flow import Demo, DemoOptions

__all__ = ["Demo", "DemoOptions", "add_arguments", "run"]


def __getattr__(name: str) -> Any:
    """``Demo`` and ``DemoOptions`` load the stand-ins: imported on first use, so that the CLI can call
    :func:`add_arguments` for every command without paying for them."""
    if name in ("Demo", "DemoOptions"):
        from peerbot.demo import flow

        return getattr(flow, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (``peerbot demo --help``)."""
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing while it runs (only a failure's reason)"
    )
    parser.add_argument(
        "--transcript", type=Path, metavar="FILE", help="also write everything it prints to FILE"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (the logs of the operator, the dispatcher and each worker)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``peerbot demo`` (see :mod:`peerbot.cli`): 0 when every stage worked, else 1."""
    from peerbot.demo.flow import Demo, DemoOptions

    quiet = bool(getattr(args, "quiet", False))
    options = DemoOptions(
        echo=None if quiet else sys.stdout,
        transcript=getattr(args, "transcript", None),
        keep=bool(getattr(args, "keep", False)),
    )
    demo = Demo(options)
    code = demo.run()
    if quiet and demo.failure is not None:
        print(f"peerbot demo failed: {demo.failure}", file=sys.stderr)
    if quiet and options.keep:
        print(f"peerbot demo kept its folder: {demo.root}", file=sys.stderr)
    return code
