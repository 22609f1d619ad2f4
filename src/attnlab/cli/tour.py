"""``attnlab tour``: chapter 3 step by step, each tensor printed as the book prints it, and heatmaps."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from ..tour import SECTIONS, Step, check_plots_dir, run_tour, write_plots

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sections = "\n".join(f"  {name:<20}{section.title}" for name, section in SECTIONS.items())
    parser = subparsers.add_parser(
        "tour",
        help="walk through chapter 3: every step computed live, printed as the book prints it",
        description=(
            "Walk through chapter 3 of Build a Large Language Model (From Scratch). Each step prints\n"
            "a one-line explanation, the attnlab code that ran, and its value as the book prints it\n"
            "(4 decimals, the book's seeds)."
            f"\n\nsections, in the chapter's order:\n{sections}"
        ),
        epilog="example: attnlab tour --section causal --plots tour-plots",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--section",
        metavar="NAME",
        help=f"run one section only, one of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--plots", metavar="DIR", help="also write the heatmaps of the sections run as PNGs into DIR")
    parser.add_argument(
        "--move-to",
        metavar="DEVICE",
        help="device the buffers lesson moves its modules to (default: cuda or mps when present, else meta)",
    )
    parser.set_defaults(func=run)


def _print_step(console: Console, step: Step) -> None:
    # Text objects, not strings: tensors' brackets would otherwise be read as rich markup.
    console.print(Text(step.explanation, style="bold"))
    for line in step.code.splitlines():
        console.print(Text(f">>> {line}", style="cyan"))
    console.print(Text(step.text))
    console.print()


def run(args: argparse.Namespace) -> int:
    if args.plots is not None:
        check_plots_dir(args.plots)  # a file, an unwritable place or no matplotlib: refused before the tour
    console = Console(highlight=False, soft_wrap=True)
    steps = run_tour(args.section, move_to=args.move_to)  # ValueError (unknown section, device) -> exit 2
    current_section = None
    for step in steps:
        if step.section != current_section:
            current_section = step.section
            console.rule(Text(f"{SECTIONS[step.section].title}  [{step.section}]"))
        _print_step(console, step)
    if args.plots is not None:
        with console.status("drawing heatmaps ..."):
            paths = write_plots(args.plots, steps)
        console.print(Text(f"wrote {len(paths)} heatmap(s) to {args.plots}: {', '.join(p.name for p in paths)}"))
    return 0
