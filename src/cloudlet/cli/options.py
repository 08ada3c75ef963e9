"""Option types the commands declare, kept free of Rich and the engine.

Typer reads a command's annotations when it builds that command, so the types they name
must be real and cheap to import: ``cloudlet --help`` loads every command module. The
arguments that name a VM, volume, snapshot or network complete those names in the shell.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from cloudlet.cli import complete
from cloudlet.cli.formats import Output as Output


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


VmArg = Annotated[str, typer.Argument(help="VM name", autocompletion=complete.vms)]
VolumeArg = Annotated[str, typer.Argument(help="volume name", autocompletion=complete.volumes)]
SnapArg = Annotated[str, typer.Argument(help="snapshot name", autocompletion=complete.snapshots)]
NetArg = Annotated[str, typer.Argument(help="network name", autocompletion=complete.networks)]
BackupOpt = Annotated[
    str | None,
    typer.Option("--backup", help="backup id", autocompletion=complete.backups),
]
