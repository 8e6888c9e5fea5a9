"""The console script. Kept tiny: for ``taskq work`` it installs the stop handlers
before the CLI framework is imported (see :mod:`taskq.stopping`)."""

from __future__ import annotations

import sys


def subcommand(argv: list[str]) -> str | None:
    """The subcommand name: the first word that is not a global option or its value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--spool":
            skip = True
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return None
    return None


def main() -> None:
    if subcommand(sys.argv[1:]) == "work":
        from .stopping import install

        install()
    from .cli import main as cli_main

    cli_main()
