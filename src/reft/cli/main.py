"""``reft <command>``: dispatches to one module per subcommand.

User errors (bad flags, files, data lines, paths, diverged training) are one line on stderr and exit status 2;
Ctrl-C is one line saying what can be resumed and exit status 130; warnings are one line each. A traceback means
a bug in reft.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from . import eval as eval_cmd
from . import generate, serve, train
from .common import OneLineParser

COMMANDS = {"train": train, "generate": generate, "eval": eval_cmd, "serve": serve}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix (shown as one line, exit 2); imported only when one is raised."""
    from ..harness.runs import RunFolderError
    from ..trainer import NonFiniteLossError

    return ValueError, OSError, RunFolderError, NonFiniteLossError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="reft",
        description="Representation Finetuning: train interventions on a frozen LM and use them.",
        epilog="Run 'reft <command> --help' for the options and examples of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torchao, when installed, is imported by transformers' loader and logs a warning per CUDA kernel file it
    # cannot load on a CPU machine and per enum it registers with torch's pytree: noise for every command
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    prefix = f"reft {args.command}"

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            note = getattr(COMMANDS[args.command], "interrupted", None)
            if sys.stderr.isatty():
                print(file=sys.stderr)  # below a progress bar cut short
            print(f"{prefix}: interrupted{': ' + note(args) if note else ''}", file=sys.stderr)
            return 130
        except Exception as e:
            if not isinstance(e, user_errors()):
                raise
            text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename and e.strerror else e
            print(f"{prefix}: error: {_one_line(text)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
