"""`cloudlet backup ...`, `cloudlet restore`, `cloudlet export` and `cloudlet import`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli import complete
from cloudlet.cli.options import BackupOpt, Output, VmArg
from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.spec.units import format_duration, format_size

# Rich and the engine are imported on first use (cli/lazy.py): start-up stays cheap.
if TYPE_CHECKING:
    from rich.table import Table

    from cloudlet.cli import render, wording
    from cloudlet.cli.progress import tracked
    from cloudlet.cli.render import err, out
    from cloudlet.engine import backup_requests
    from cloudlet.engine.backup_views import BackupView
    from cloudlet.engine.backups import BackupService
    from cloudlet.engine.factory import open_engine
    from cloudlet.spec.instance import BackupPolicy
else:
    from cloudlet.cli.lazy import lazy

    Table = lazy("rich.table", "Table")
    render = lazy("cloudlet.cli.render")
    wording = lazy("cloudlet.cli.wording")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    tracked = lazy("cloudlet.cli.progress", "tracked")
    backup_requests = lazy("cloudlet.engine.backup_requests")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")

backup_app = typer.Typer(
    help="Full and incremental backups of a VM's root disk, verify, retention.",
    no_args_is_help=True,
)

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def _ops() -> BackupService:
    return open_engine().backups


def _notices(ops: BackupService) -> None:
    for notice in ops.notices:
        err.print(f"[yellow]note:[/] {notice}")


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore)
    app.command("export")(export)
    app.command("import")(import_)


def _table(items: list[BackupView]) -> None:
    if not items:
        err.print("no backups yet: 'cloudlet backup create VM'")
        return
    table = Table(box=None, pad_edge=False)
    columns = ("ID", "VM", "CREATED", "KIND", "DISKS", "SIZE", "READ", "STORED", "VERIFIED", "NOTE")
    for column in columns:
        table.add_column(column)
    for b in items:
        table.add_row(
            b.id,
            b.vm,
            b.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            b.kind,
            str(len(b.disks) or "-"),
            format_size(sum(d.size for d in b.disks) or b.size),
            format_size(b.read),
            format_size(b.stored),
            b.verified or "-",
            b.note,
        )
    out.print(table)


@backup_app.command("create")
def backup_create(vm: VmArg, output: OutputOpt = Output.table) -> None:
    """Back up a VM (running or stopped): the first backup reads all, later ones what changed."""
    ops = _ops()
    with tracked(f"backing up {vm}", quiet=output == Output.json) as progress:
        backup = ops.create(vm, progress=progress)
    _notices(ops)
    if output == Output.json:
        render.print_json(backup.to_dict())
        return
    err.print(
        f"{backup.kind} backup {backup.id} of {vm} ({backup.consistency}): "
        f"read {format_size(backup.read)}, stored {format_size(backup.stored)} new"
    )
    if backup.note:
        err.print(f"[yellow]note:[/] {backup.note}")


@backup_app.command("list")
def backup_list(
    vm: Annotated[
        str | None, typer.Argument(help="VM name (default: all)", autocompletion=complete.vms)
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Backups, newest first."""
    items = _ops().backups(vm)
    if output == Output.json:
        render.print_json([b.to_dict() for b in items])
    else:
        _table(items)


@backup_app.command("verify")
def backup_verify(
    vm: VmArg,
    backup: Annotated[
        str | None,
        typer.Option("--backup", help="one backup (default: all)", autocompletion=complete.backups),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Re-read every chunk of the VM's backups and check its SHA-256."""
    report = _ops().verify(vm, backup)
    if output == Output.json:
        render.print_json(report.to_dict())
    for problem in report.problems:
        err.print(f"[red]{problem}[/]")
    backup_requests.check_verified(report)
    if output != Output.json:
        err.print(f"{len(report.backups)} backup(s) of {vm} verified: {report.chunks} chunks OK")


def _policy_text(policy: BackupPolicy) -> str:
    every = policy.interval()
    rules = policy.retention()
    keep = ", ".join(
        f"{name} {getattr(rules, name)}"
        for name in ("last", "hourly", "daily", "weekly", "monthly")
        if getattr(rules, name)
    )
    return (
        f"every {format_duration(every)}" if every else "not scheduled"
    ) + f"; keep {keep or 'everything'}"


@backup_app.command("policy")
def backup_policy(
    vm: VmArg,
    every: Annotated[
        str | None, typer.Option(help="interval such as 1h or 1d; 'off' stops")
    ] = None,
    keep_last: Annotated[int | None, typer.Option(help="keep the newest N")] = None,
    keep_hourly: Annotated[int | None, typer.Option(help="keep one per hour, N hours")] = None,
    keep_daily: Annotated[int | None, typer.Option(help="keep one per day, N days")] = None,
    keep_weekly: Annotated[int | None, typer.Option(help="keep one per week, N weeks")] = None,
    keep_monthly: Annotated[int | None, typer.Option(help="keep one per month, N months")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show or set when a VM is backed up and which backups are kept (stored in its spec)."""
    update = backup_requests.PolicyUpdate(
        every, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly
    )
    policy = _ops().set_policy(vm, update)
    if output == Output.json:
        render.print_json(policy.model_dump())
    else:
        err.print(f"{vm}: {_policy_text(policy)}")


@backup_app.command("run-due")
def backup_run_due() -> None:
    """Back up every VM whose policy is due, then prune it (run this from cron)."""
    ops = _ops()
    result = ops.run_due()
    _notices(ops)
    for run in result.runs:
        if run.backup is None:
            failure = wording.with_commands(run.error or "failed", run.next_steps)
            err.print(f"{run.vm}: FAILED: {failure}")
        else:
            pruned = f", pruned {len(run.pruned)}" if run.pruned else ""
            err.print(f"{run.vm}: {run.backup.kind} backup {run.backup.id}{pruned}")
    if not result.runs:
        err.print("no backup is due")
    if result.failed:
        raise CloudletError(
            f"{result.failed} scheduled backup(s) failed",
            hint="see the lines above; fix and run 'cloudlet backup run-due' again",
        )


@backup_app.command("prune")
def backup_prune(vm: VmArg) -> None:
    """Delete the backups the VM's retention policy no longer keeps, then unused chunks."""
    result = _ops().prune(vm)
    if result.pruned:
        err.print(
            f"pruned {len(result.pruned)} backup(s) of {vm}, freed {format_size(result.freed)}"
        )
    else:
        err.print(f"nothing to prune: the policy keeps every backup of {vm}")


def restore(
    vm: VmArg,
    latest: Annotated[bool, typer.Option("--latest", help="the newest good backup")] = False,
    backup: BackupOpt = None,
    as_name: Annotated[
        str | None, typer.Option("--as", help="restore into a new VM of this name")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="stop the VM first if it runs (in place)")
    ] = False,
) -> None:
    """Restore a VM's disk from a backup, in place (VM stopped) or as a new VM (--as)."""
    try:
        backup = backup_requests.chosen_backup(latest=latest, backup_id=backup)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, hint="give --latest or --backup ID") from None
    ops = _ops()
    try:
        with tracked(f"restoring {as_name or vm}") as progress:
            done = ops.restore(
                vm, backup_id=backup, as_name=as_name, force=force, progress=progress
            )
    finally:
        _notices(ops)
    render.said(done)


def export(
    vm: VmArg,
    file: Annotated[Path, typer.Argument(help="the file to write (a tar)")],
) -> None:
    """Write a stopped VM (spec and flattened disk, with checksums) to one file."""
    with tracked(f"exporting {vm}") as progress:
        done = _ops().export(vm, file.expanduser(), progress=progress)
    render.said(done)


def import_(
    file: Annotated[Path, typer.Argument(help="a file made by 'cloudlet export'")],
    name: Annotated[str | None, typer.Option("--name", help="name of the new VM")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a VM from an exported file, after checking its checksums and disk."""
    with tracked(f"importing {file.name}", quiet=output == Output.json) as progress:
        view = _ops().import_(file.expanduser(), name, progress=progress)
    if output == Output.json:
        render.print_json(view.to_dict())
    else:
        err.print(f"{view.name} imported from {file} (stopped; 'cloudlet start {view.name}')")
