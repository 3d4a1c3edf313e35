"""``python -m peerbot.demo [--quiet] [--transcript FILE] [--keep]``: the same as ``peerbot demo``."""

from __future__ import annotations

import argparse
import sys

from peerbot.demo import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peerbot.demo",
        description="Show the whole flow offline, with local stand-ins and no accounts.",
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
