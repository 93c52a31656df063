"""Run the installed ``retro`` CLI as a subprocess, isolated from the caller's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Result:
    """One finished ``retro`` process."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"retro {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any ``RETRO_*``, plus ``extra``; wide, plain output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRO_")}
    env.update(COLUMNS="200", LINES="50", NO_COLOR="1", PYTHONIOENCODING="utf-8")
    env.update(extra or {})
    return env


def run_retro(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Result:
    """``python -m retro ARGS`` in ``cwd`` (so no ``retro.db``/``.env``/``retro.toml`` leaks in).

    Args:
        args: the command line after ``retro``.
        cwd: working directory of the process.
        env: ``RETRO_*`` (or other) variables on top of a clean environment.
        timeout: seconds before the process is killed and the test fails.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "retro", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )
    return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)


def ok(result: Result) -> Result:
    """Assert ``result`` exited 0 without a traceback; return it."""
    assert result.code == 0, result
    assert "Traceback" not in result.output, result
    return result


def json_document(result: Result, schema: str) -> dict[str, Any]:
    """``result``'s stdout (exit 0) parsed as one JSON document of ``schema``."""
    document = json.loads(ok(result).stdout)
    assert isinstance(document, dict), result
    assert document["schema"] == schema, document
    return document


def one_error_line(result: Result, *words: str) -> str:
    """Assert ``result`` is a usage error: exit 2, one ``retro: error:`` line naming ``words``.

    Returns:
        The error line.
    """
    assert result.code == 2, result
    assert "Traceback" not in result.output, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith("retro: error:"), result
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not named in {line!r}"
    assert result.stdout.strip() == "", result
    return line


def invoke_retro(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """``retro ARGS`` in this process (Click's ``CliRunner`` isolation around
    :func:`retro.cli.main`): same exit codes and streams as :func:`run_retro`, in a
    fraction of the time. Caller's ``RETRO_*`` variables are hidden; ``cwd`` is the
    working directory while it runs. Not for commands that must be signalled."""
    import logging

    from click.testing import CliRunner

    from retro.cli import main

    hidden: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RETRO_")}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    here = Path.cwd()
    code = 0
    with CliRunner().isolation(env={**hidden, **(env or {})}) as (out, err, _):
        os.chdir(cwd)
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.chdir(here)
            root.handlers[:], root.level = handlers, level
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return Result(tuple(args), code, stdout, stderr)
