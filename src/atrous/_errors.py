"""The user-facing error of the command line: ``atrous <command>`` prints it as one line, exit code 2.

It lives here, below every command module, so that ``analysis/commands.py`` and ``compare/commands.py``
raise it without importing :mod:`atrous.cli` (dependencies point downward)."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""
