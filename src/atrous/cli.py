"""``atrous <command>``: a thin argparse front end; each command lives beside the code it drives.

Subcommands register themselves through a ``register(subparsers)`` function in their own module
(listed in ``_COMMAND_MODULES``); a module's heavy imports (torch, matplotlib) happen inside its
handler, so ``atrous --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from ._errors import CLIError  # noqa: F401 -- re-exported: atrous.cli.CLIError

# module -> registers one or more subcommands
_COMMAND_MODULES = (
    "atrous.analysis.commands",   # rf, design, show
    "atrous.compare.commands",    # compare
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atrous",
        description="Dilated (atrous) convolutions: compute, measure, design, use, compare.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'atrous <command> --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"atrous {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"atrous {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atrous {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
