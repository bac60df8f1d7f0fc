"""``python -m data``: one command line for MRC Studio's data tools, one subcommand per module.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``: it adds its
parser with ``subparsers.add_parser(name, ...)`` and sets ``func`` (a function of the parsed
arguments returning an exit code) with ``set_defaults(func=...)``. To add one, write the module
and append its dotted name to :data:`COMMAND_MODULES`; nothing else changes here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "data.shapes.synth",  # synth: generate a Shapes dataset folder
    "data.annotate",  # annotate: label triplets with a judge
    "data.stats",  # stats: score distributions, word clouds, judge agreement
    "data.interop",  # import-rewardedit, export, ...
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data",
        description="MRC Studio data tools: datasets, reward annotation, statistics, interop.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise RuntimeError(f"the subcommand module {name} cannot be imported: {e}") from e
        if not hasattr(module, "add_parser"):
            raise RuntimeError(f"{name} is listed as a subcommand module but has no add_parser()")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
