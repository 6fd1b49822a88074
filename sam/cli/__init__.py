"""Command line: `sam predict ...`, `sam annotate ...`, `sam everything ...`, `sam info ...` (or `python -m sam ...`).

Exit codes: 0 done; 1 unexpected error (traceback); 2 bad arguments; 3 the model could not be loaded;
4 no images found, or an image could not be read (the others are still processed). Errors go to stderr
as one line starting with "error: ", skipped images as "warning: ". Results are listed on stdout.
"""

import argparse
import sys

from ..allocator import reuse_freed_memory
from . import annotate, everything, info, predict
from .common import CliError, results_on_stdout

COMMANDS = (predict, annotate, everything, info)  # each module has add_parser(subparsers), which sets func=run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam", description="Segment Anything from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # bad arguments: argparse prints usage and exits with 2
    if extra:  # words after a flag's values: more SOURCE / KEY=VALUE words for the commands that take them
        if not hasattr(args, "inputs") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs = [*args.inputs, *extra]
    reuse_freed_memory()  # see sam/allocator.py
    try:
        with results_on_stdout():
            return int(args.func(args) or 0)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
