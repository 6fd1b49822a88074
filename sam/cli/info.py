"""`sam info model=sam_b.pt` (or `sam info sam_b.pt`, `sam info --model sam_b.pt`): what a model is, one line each."""

import argparse

from .common import DEFAULT_MODEL, EXIT_OK, EXIT_USAGE, CliError, load_sam, split_pairs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, layers, size on disk, precision and device of a model")
    p.add_argument("inputs", nargs="*", metavar="MODEL | model=MODEL", help=f"model (default {DEFAULT_MODEL})")
    p.add_argument("--model", help="the same, as a flag")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plain, pairs = split_pairs(args.inputs)
    device = str(pairs.pop("device", args.device))
    given = [*plain, *([pairs.pop("model")] if "model" in pairs else []), *([args.model] if args.model else [])]
    if pairs:
        raise CliError(f"{next(iter(pairs))}= is not taken by `sam info` (it takes model= and device=)", EXIT_USAGE)
    if len(given) > 1:
        raise CliError(f"give one model, got {len(given)}: {', '.join(map(str, given))}", EXIT_USAGE)
    info = load_sam(str(given[0]) if given else DEFAULT_MODEL, device).info(verbose=False)
    for key, value in info.items():
        if key == "files":
            value = ", ".join(value) or "-"
        print(f"{key}: {value if value is not None else '-'}")
    return EXIT_OK
