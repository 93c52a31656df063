#!/usr/bin/env python3
"""The README's two commands, on a fresh machine with only Python 3.11+:

    python3 tasks.py demo    # set up .venv, then run `retro demo`
    python3 tasks.py test    # set up .venv, then ruff, mypy --strict and pytest

Each creates (or refreshes) ./.venv with retro and its dev tools installed.
Extra arguments after `test` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".retro-installed"


def run(*args: str | Path) -> None:
    """Run a command in the repository; exit with its code if it fails."""
    print("+", " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
    if code:
        sys.exit(code)


def setup() -> None:
    """Create .venv and install retro with its dev extras (again when pyproject changes)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file must say so on older Pythons
        sys.exit(f"retro needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("demo", "test"):
        sys.exit("usage: python3 tasks.py demo | test [pytest args…]")
    setup()
    if argv[0] == "demo":
        run(BIN / "retro", "demo", *argv[1:])
        return
    sources = [p for p in ("retro", "tests", "bench", "tasks.py") if (ROOT / p).exists()]
    run(BIN / "ruff", "check", *sources)
    run(BIN / "ruff", "format", "--check", *sources)
    run(BIN / "mypy", "--strict", "retro")
    run(BIN / "python", "-m", "pytest", *argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
