"""`cloudlet cp`: files and directory trees into and out of a VM, through its guest agent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.errors import InvalidInput
from cloudlet.spec.units import format_size

if TYPE_CHECKING:
    from cloudlet.cli.progress import byte_progress
    from cloudlet.cli.render import err
    from cloudlet.engine.factory import open_engine
    from cloudlet.guest.copy_rules import TreeCopy
else:
    from cloudlet.cli.lazy import lazy

    byte_progress = lazy("cloudlet.cli.progress", "byte_progress")
    err = lazy("cloudlet.cli.render", "err")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")

SHOWN_SKIPS = 10


def cp(
    source: Annotated[str, typer.Argument(help="FILE, DIR or VM:PATH")],
    destination: Annotated[str, typer.Argument(help="FILE, DIR or VM:PATH")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="copy a directory and all below it")
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            metavar="USER[:GROUP]",
            help="who owns what is copied in (default: the VM's login user)",
        ),
    ] = None,
) -> None:
    """Copy files or directory trees into or out of a VM through its guest agent.

    VM:~/x, VM:~ and VM:x are below the login user's home; VM:/x is absolute.
    """
    src_vm, src_path = split_remote(source)
    dst_vm, dst_path = split_remote(destination)
    if (src_vm is None) == (dst_vm is None):
        raise InvalidInput(
            "exactly one side of cp must be VM:PATH",
            hint="use 'cloudlet cp FILE VM:PATH' or 'cloudlet cp VM:PATH FILE'",
        )
    if owner is not None and dst_vm is None:
        raise InvalidInput(
            "--owner applies to copies into a VM",
            hint="files copied out belong to you; drop --owner",
        )
    engine = open_engine()
    local = Path(dst_path if dst_vm is None else src_path)
    try:
        with byte_progress() as progress:
            if dst_vm is not None and recursive:
                tree = engine.copy_tree_to(dst_vm, local, dst_path, progress=progress, owner=owner)
            elif dst_vm is not None:
                copied = engine.copy_to(dst_vm, local, dst_path, progress=progress, owner=owner)
                tree = None
            elif recursive:
                assert src_vm is not None
                tree = engine.copy_tree_from(src_vm, src_path, local, progress=progress)
            else:
                assert src_vm is not None
                copied = engine.copy_from(src_vm, src_path, local, progress=progress)
                tree = None
    except InvalidInput as exc:
        if not recursive and "is a directory" in exc.message:
            exc.hint = "add -r to copy a directory and everything below it"
        raise
    if tree is None:
        err.print(f"copied {format_size(copied)}")
        return
    _report(tree)


def _report(tree: TreeCopy) -> None:
    from rich.markup import escape

    err.print(
        f"copied {format_size(tree.data_bytes)} ({tree.files} files, {tree.dirs} directories)"
    )
    if tree.skipped:
        err.print(
            f"[yellow]warning:[/] skipped {len(tree.skipped)} entries that are not "
            "plain files or directories:"
        )
        for line in tree.skipped[:SHOWN_SKIPS]:
            err.print(f"  {escape(line)}", highlight=False)
        if len(tree.skipped) > SHOWN_SKIPS:
            err.print(f"  ... and {len(tree.skipped) - SHOWN_SKIPS} more")


def split_remote(text: str) -> tuple[str | None, str]:
    """``VM:PATH`` as (VM, PATH); anything else (no colon, a "/" before it) is local."""
    name, sep, path = text.partition(":")
    if sep and name and "/" not in name:
        return name, path
    return None, text
