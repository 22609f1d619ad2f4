"""The ``attnlab`` command: a thin layer that parses arguments and calls the library.

Each subcommand lives in its own module with ``add_parser(subparsers)``; register it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Subcommand modules, in the order ``attnlab --help`` lists them.
COMMANDS: tuple[str, ...] = ("tour", "check", "bench", "generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="Attention mechanisms for LLMs, built from scratch in PyTorch.",
        epilog=(
            "examples:\n"
            "  attnlab tour --section causal      # chapter 3, step by step, as the book prints it\n"
            "  attnlab check                      # every implementation vs a float64 reference\n"
            "  attnlab bench --preset notebook    # time, FLOP rate, memory and accuracy of each\n"
            "  attnlab generate --weights ./gpt2 --prompt 'Every effort moves you'\n"
            "run 'attnlab COMMAND --help' for each command's options"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # bad user input that the library rejected with a clear message
        print(f"attnlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
