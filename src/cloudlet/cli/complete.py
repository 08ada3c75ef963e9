"""Shell completion: the names the shell offers, read straight from the state.

A completion runs on every Tab, so it must answer at once: the state database is opened
read-only with the sqlite3 module (no engine, no SQLAlchemy, no pydantic) and a missing,
locked or foreign database completes nothing rather than printing an error into the
user's command line. Images are the image store's directories plus the built-in and
catalog names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

from cloudlet.config import Paths, default_home

SHELLS = ("bash", "zsh", "fish")
# The shells' own spelling of the completion instruction (Click's "bash_complete") is
# taken as well as Typer's ("complete_bash").
_CLICK_STYLE = {
    f"{shell}_{verb}": f"{verb}_{shell}" for shell in SHELLS for verb in ("complete", "source")
}
COMPLETE_VAR = "_CLOUDLET_COMPLETE"


class LineParams(Protocol):
    """The values given earlier on the line (a Click context has them too)."""

    @property
    def params(self) -> Mapping[str, Any]: ...


def requested() -> bool:
    """The shell asks for completions: get Typer's completion ready to answer."""
    value = os.environ.get(COMPLETE_VAR)
    if not value:
        return False
    if value in _CLICK_STYLE:
        os.environ[COMPLETE_VAR] = _CLICK_STYLE[value]
    from typer._completion_classes import completion_init

    completion_init()  # registers Typer's bash, zsh and fish formats
    return True


def script(shell: str) -> str:
    """The script that makes ``shell`` ask cloudlet for completions."""
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    return get_completion_script(prog_name="cloudlet", complete_var=COMPLETE_VAR, shell=shell)


def _index() -> ModuleType:
    """The engine's name queries, imported only when the shell asks (--help loads this
    module, and must not load the engine)."""
    from cloudlet.engine import name_index

    return name_index


def _matching(names: list[str], incomplete: str) -> list[str]:
    return sorted({n for n in names if n.startswith(incomplete)})


def vms(incomplete: str) -> list[str]:
    return _matching(_index().vms(), incomplete)


def volumes(incomplete: str) -> list[str]:
    return _matching(_index().volumes(), incomplete)


def networks(incomplete: str) -> list[str]:
    return _matching(_index().networks(), incomplete)


def vm_networks(incomplete: str) -> list[str]:
    """What ``create --network`` takes: nat, none or a virtual network."""
    return _matching(["nat", "none", *_index().networks()], incomplete)


def _vm_on_line(ctx: LineParams) -> str | None:
    for key in ("vm", "source"):
        value = ctx.params.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def snapshots(ctx: LineParams, incomplete: str) -> list[str]:
    """The snapshots of the VM given earlier on the line (of every VM when none is)."""
    return _matching(_index().snapshots(_vm_on_line(ctx)), incomplete)


def backups(ctx: LineParams, incomplete: str) -> list[str]:
    """The backup ids of the VM given earlier on the line (of every VM when none is)."""
    return _matching(_index().backups(_vm_on_line(ctx)), incomplete)


def local_images() -> list[str]:
    """Images with a current version in the image store (built-ins once built)."""
    root = Paths(default_home()).images
    try:
        return [p.parent.name for p in root.glob("*/current")]
    except OSError:
        return []


def images(incomplete: str) -> list[str]:
    """Local, built-in and catalog images: any of them is a valid ``--image``."""
    from cloudlet.images.catalog import names as catalog_names
    from cloudlet.images.store import BUILTIN

    return _matching([*local_images(), *BUILTIN, *catalog_names()], incomplete)


def catalog_images(incomplete: str) -> list[str]:
    from cloudlet.images.catalog import names as catalog_names

    return _matching(catalog_names(), incomplete)
