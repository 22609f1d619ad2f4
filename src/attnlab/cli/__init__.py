"""The ``attnlab`` command: a thin layer that parses arguments and calls the library.

Each subcommand lives in its own module with ``add_parser(subparsers)``; register it in ``COMMANDS``.

Exit codes: 0 success; 1 a check that ran and found a mismatch (``attnlab check``); 2 an error: bad
arguments, input the library refused (``ValueError``), or a file that could not be written. Errors are
one line on stderr, ``attnlab COMMAND: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]

#: Subcommand modules, in the order ``attnlab --help`` lists them.
COMMANDS: tuple[str, ...] = ("tour", "check", "bench", "generate", "memory", "train")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, the same shape as the library's (subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attnlab",
        description="Attention mechanisms for LLMs, built from scratch in PyTorch.",
        epilog=(
            "examples:\n"
            "  attnlab tour --section causal      # chapter 3, step by step, as the book prints it\n"
            "  attnlab check                      # every implementation vs a float64 reference\n"
            "  attnlab bench --preset notebook    # time, FLOP rate, memory and accuracy of each\n"
            "  attnlab generate --weights ./gpt2 --prompt 'Every effort moves you'\n"
            "  attnlab memory --model ./Llama-3.1-8B --context 8192   # KV-cache bytes per layer kind\n"
            "  attnlab train --task mqar --out runs/mqar   # train a small decoder from scratch\n"
            "run 'attnlab COMMAND --help' for each command's options"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame "attnlab"; name the subcommand, as every other error does
        parser.exit(2, f"attnlab {args.command}: error: unrecognized arguments: {_one_line(' '.join(unknown))}\n")
    # torchao, when installed, is imported by transformers and logs a warning per CUDA-only extension it cannot
    # load on a CPU machine; they say nothing about this run.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # input the library refused, or a file it could not write
        print(f"attnlab {args.command}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
