"""`python -m retro` runs the CLI."""

from retro.cli import main

main()
