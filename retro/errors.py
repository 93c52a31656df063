"""One error family: every error an operator is meant to read derives from
:class:`RetroError`, which carries the exit code the CLI ends with.

The codes are those of docs/production.md ("Every command exits with one of three
codes"): 0 success, 1 the command ran and failed, 2 bad usage or configuration with
nothing done. The CLI catches :class:`RetroError` alone and prints its message as one
line; any other exception is unexpected (exit 1, its type named).

This module imports nothing of retro, so every layer (the pure machine included) may
import it.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
"""Success (also ``retro run`` stopped by SIGTERM or SIGINT after its tick)."""
EXIT_FAILURE = 1
"""The command ran and failed, or an unexpected error."""
EXIT_USAGE = 2
"""Bad usage or configuration: nothing was done."""


class RetroError(Exception):
    """An error whose message is meant for the operator: one line, masked (never a
    password), naming what to fix. ``exit_code`` is the process's exit status when it
    ends a CLI command (class attribute; subclasses set theirs)."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class UsageError(RetroError):
    """Bad usage or configuration, or a service retro cannot reach: nothing was done
    (exit 2)."""

    exit_code: ClassVar[int] = EXIT_USAGE
