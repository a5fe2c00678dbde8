"""The ``riir`` command line: one entry point, subcommands contributed by the packages.

Each module in ``COMMAND_MODULES`` adds its subcommands with ``add_commands(subparsers)`` and
imports anything heavy (torch, the web stack) only when its command runs, so ``riir --help``
is instant.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from conventions.errors import RiirError
from riir import __version__
from worker.inference.memory import keep_freed_memory

COMMAND_MODULES = (
    "riir.commands",  # register, register-series, models
    "riir.serve",  # serve
    "model.training.commands",  # train, evaluate, experiment
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riir",
        description="Recurrent Inference Image Registration: register medical images, "
        "train models, and serve registration over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"riir {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # this process is ours: see worker.inference.memory
    try:
        return int(args.run(args) or 0)
    except RiirError as exc:
        print(f"riir {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"riir {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
