"""The `cloudlet` command's entry point: the reads users repeat most, answered at once.

Typer (with its pydantic adapters), Click and every command module cost a tenth of a
second and more before a command runs. ``cloudlet --version`` and the plain spellings of
``list`` and ``show`` (cli/quick.py) are answered here without them; everything else,
and any read the engine's read path leaves to the engine, goes to the full CLI
(cli/main.py), which parses, errs and renders as always.
"""

from __future__ import annotations

import os
import sys

from cloudlet.cli.formats import LIST_NAMES, SHOW_NAMES

# The shell asks for completions through it (cli/complete.py): the full CLI answers.
_COMPLETE_VAR = "_CLOUDLET_COMPLETE"


def quick(argv: list[str]) -> bool:
    """Answer ``argv`` here if it is a plain read; True when it was answered."""
    if argv == ["--version"]:
        from cloudlet.cli.version import version

        sys.stdout.write(f"cloudlet {version()}\n")
        return True
    if os.environ.get(_COMPLETE_VAR) or not argv or argv[0] not in (*LIST_NAMES, *SHOW_NAMES):
        return False
    from cloudlet.cli import quick as reads

    call = reads.parse(argv)
    return call is not None and reads.answer(call)


def main() -> None:
    """Entry point: a plain read answered at once, everything else by the full CLI."""
    try:
        answered = quick(sys.argv[1:])
    except (Exception, KeyboardInterrupt) as exc:
        from cloudlet.cli.main import report

        report(exc)  # said as the full CLI says it
    if not answered:
        from cloudlet.cli.main import entry as full

        full()
