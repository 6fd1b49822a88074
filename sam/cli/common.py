"""What the subcommands share: exit codes, the error they raise, key=value arguments, the model, reading images."""

import argparse
import ast
import io
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_IMAGES = 0, 2, 3, 4
DEFAULT_MODEL = "sam-vit-base"
T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ResultsOnStdout(io.TextIOBase):
    """sys.stdout while a command runs: what the main thread prints (the results) goes to stdout, what other
    threads print goes to stderr. Ray's driver prints its workers' deaths ("(raylet) A worker died ...") on
    stdout from a thread of its own, sometimes seconds later; the results stay one per line all the same."""

    def __init__(self, out: io.TextIOBase, err: io.TextIOBase) -> None:
        self.out, self.err = out, err

    def write(self, text: str) -> int:
        main = threading.current_thread() is threading.main_thread()
        return (self.out if main else self.err).write(text)

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    @property
    def encoding(self) -> str:
        return self.out.encoding


@contextmanager
def results_on_stdout() -> Iterator[None]:
    out = sys.stdout
    sys.stdout = ResultsOnStdout(out, sys.stderr)
    try:
        yield
    finally:
        sys.stdout = out


def numbers(n: int, what: str):
    """An argparse type: n comma-separated numbers, named `what` in its messages."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def smart_value(text: str):
    """A key=value value as Ultralytics' CLI reads it: a Python literal ([[400,370]], 0.25, True), else text.

    true / false / none are read in any case; anything that is not a literal stays a string (file names).
    """
    lower = text.lower()
    if lower in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lower]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def split_pairs(tokens: list[str]) -> tuple[list[str], dict]:
    """Command-line words -> (plain words, {key: value} of the `key=value` ones). CliError for a key given twice."""
    plain, pairs = [], {}
    for token in tokens:
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", token, flags=re.S)
        if match is None:
            plain.append(token)
            continue
        key, value = match.groups()
        if key in pairs:
            raise CliError(f"{key}= is given twice", EXIT_USAGE)
        pairs[key] = smart_value(value)
    return plain, pairs


def load_sam(model: str, device: str):
    """sam.SAM(model) for the subcommands; CliError with EXIT_MODEL when the weights cannot be had."""
    from ..api import SAM

    try:
        return SAM(model, device=device)
    except Exception as e:  # any failure to find, fetch or read the weights
        raise CliError(f"cannot load model {model!r}: {e}", EXIT_MODEL) from e


def find_images(source: str) -> list[Path]:
    """The image files of a file, folder or glob; none found: CliError with EXIT_IMAGES."""
    from ..images import list_images

    try:
        return list_images(source)
    except FileNotFoundError as e:
        raise CliError(str(e), EXIT_IMAGES) from e


def read_images(paths: list[Path], extras: Iterable[T], desc: str) -> Iterator[tuple[Path, np.ndarray, T]]:
    """(path, HxWx3 uint8 image, extra) for each readable image, in order, with a progress bar named desc.

    An unreadable file gets a "warning: ..." line on stderr and is skipped; once all are done, a CliError
    with EXIT_IMAGES says how many could not be read.
    """
    from tqdm import tqdm

    from ..images import ImageError
    from ..sources import read_file

    items = list(zip(paths, extras))
    unreadable = 0
    for path, extra in tqdm(items, desc=desc, unit="image", disable=len(items) < 2, file=sys.stderr):
        try:
            image = read_file(path)
        except ImageError as e:
            print(f"warning: {e}", file=sys.stderr)
            unreadable += 1
            continue
        yield path, image, extra
    if unreadable:
        raise CliError(f"{unreadable} of {len(paths)} images could not be read", EXIT_IMAGES)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS], --actors, --cpus-per-actor: the command on Ray Data (`pip install .[scale]`)."""
    group = parser.add_argument_group("Ray (a cluster, or a local Ray started for the job; needs ray[data])")
    group.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="run on Ray Data: alone, a local Ray for the job; or a cluster's address (auto, HOST:6379, ray://HOST:10001)",
    )  # fmt: skip
    group.add_argument("--actors", type=int, metavar="N", help="actors, one model each (default: all that fit)")
    group.add_argument("--cpus-per-actor", type=int, metavar="N", help="CPUs (torch threads) per actor (default 4)")


def ray_options(args: argparse.Namespace) -> dict:
    """engine, address, actors and cpus_per_actor for the library calls, from the --ray arguments."""
    if args.ray is None:
        if args.actors is not None or args.cpus_per_actor is not None:
            raise CliError("--actors and --cpus-per-actor go with --ray", EXIT_USAGE)
        return {"engine": "local"}
    for name in ("actors", "cpus_per_actor"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1", EXIT_USAGE)
    address = None if args.ray == "local" else args.ray
    return {"engine": "ray", "address": address, "actors": args.actors, "cpus_per_actor": args.cpus_per_actor}


def report_summary(summary) -> None:
    """A sam.scale.Summary: its line and each failure on stderr; CliError with EXIT_IMAGES when some images failed."""
    print(summary.line(), file=sys.stderr)
    for failure in summary.failures:
        print(f"warning: {failure['error']}", file=sys.stderr)
    if summary.failed:
        message = f"{summary.failed} of {summary.images} images failed"
        if summary.engine == "ray":
            from ..scale.files import SUMMARY_NAME

            message += f" (listed in {Path(summary.output) / SUMMARY_NAME})"
        raise CliError(message, EXIT_IMAGES)
