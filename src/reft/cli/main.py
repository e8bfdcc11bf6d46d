"""``reft <command>``: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from . import eval as eval_cmd
from . import generate, serve, train

COMMANDS = {"train": train, "generate": generate, "eval": eval_cmd, "serve": serve}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reft",
        description="Representation Finetuning: train interventions on a frozen LM and use them.",
        epilog="Run 'reft <command> --help' for the options and examples of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"reft {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
