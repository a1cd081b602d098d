"""The `stop-hf` command. Each subcommand is a module in this package defining `add_parser(subparsers)`; the
parser it adds sets `func(args) -> int`. User errors print one line and exit 2 (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..config import StopConfigError
from ..hooks import StopUnsupportedError
from ..siglip_head import SiglipHeadError


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


USER_ERRORS = (CliError, StopConfigError, StopUnsupportedError, FileNotFoundError, ValueError, TypeError)
USER_ERRORS += (SiglipHeadError,)  # the head is not cached / not readable: its message says what to do


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stop-hf", description="Sink-token-aware video token pruning for HuggingFace video LLMs."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"stop-hf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `stop-hf configs | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
