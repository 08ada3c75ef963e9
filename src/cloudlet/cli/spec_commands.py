"""`cloudlet spec`, `plan`, `apply`, and the spec-file side of `create` (--from, the wizard).

Parse, call the engine, render: the decisions themselves are made in engine/apply.py.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli import wording
from cloudlet.cli.options import Output
from cloudlet.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from cloudlet.cli import render
    from cloudlet.cli.progress import phases
    from cloudlet.cli.render import err, out
    from cloudlet.engine import apply as apply_mod
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.factory import open_engine
    from cloudlet.engine.views import InstanceView
    from cloudlet.spec.document import VMDocument, VMEntry
else:
    from cloudlet.cli.lazy import lazy

    render = lazy("cloudlet.cli.render")
    phases = lazy("cloudlet.cli.progress", "phases")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")

# The spec-file format and apply's planner are imported inside the functions that use
# them: only spec, plan, apply and create --from need them, not every command's start-up.

FileArg = Annotated[Path, typer.Argument(help="spec file (YAML); - for stdin")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def read_entries(path: Path) -> list[VMEntry]:
    """Every VM of a spec file; errors name the file, line and field."""
    from cloudlet.spec import document

    if str(path) == "-":
        return document.parse_documents(sys.stdin.read(), "<stdin>")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise InvalidInput(f"cannot read {path}: {reason}", hint="check the path") from None
    return document.parse_documents(text, str(path))


def show_created(engine: Engine, vm: InstanceView, output: Output) -> None:
    for notice in engine.notices:
        err.print(f"[yellow]note:[/] {notice}")
    if output == Output.json:
        render.print_json(vm.to_dict())
    else:
        err.print(f"[green]{vm.name}[/] is {vm.state}")
        render.instances_table([vm])


def create_from_file(path: Path, output: Output) -> None:
    """`cloudlet create --from FILE`: exactly one VM."""
    entries = read_entries(path)
    if len(entries) != 1:
        raise InvalidInput(
            f"{path} declares {len(entries)} VMs; create --from takes one",
            hint=f"use 'cloudlet apply -f {path}' for several",
        )
    create_entry(entries[0], output)


def create_entry(entry: VMEntry, output: Output) -> None:
    from cloudlet.engine import apply as apply_mod

    engine = open_engine()
    with phases(f"creating {entry.name}") as progress:
        vm = apply_mod.create_from(engine, entry, progress=progress)
    show_created(engine, vm, output)


def create_argv(doc: VMDocument) -> list[str]:
    """The `cloudlet create ...` command line that asks for the same VM as ``doc``."""
    from cloudlet.spec.document import size_text

    spec = doc.spec
    argv = ["cloudlet", "create", doc.metadata.name, "--image", spec.image]
    if spec.type is not None:
        argv += ["--type", spec.type]
    if spec.cpus is not None:
        argv += ["--cpus", str(spec.cpus)]
    if spec.memory is not None:
        argv += ["--memory", size_text(spec.memory)]
    if spec.disk_size is not None:
        argv += ["--disk-size", size_text(spec.disk_size)]
    if spec.arch is not None:
        argv += ["--arch", spec.arch]
    if spec.location != "local":
        argv += ["--location", spec.location]
    if spec.profile != "modern":
        argv += ["--profile", spec.profile]
    if spec.network != "nat":
        argv += ["--network", spec.network]
    if spec.restrict_network:
        argv.append("--restrict-network")
    if spec.containers:
        argv.append("--containers")
    for volume in spec.volumes:
        argv += ["--volume", size_text(volume)]
    if spec.access.user is not None:
        argv += ["--user", spec.access.user]
    for key in spec.access.ssh_keys:
        argv += ["--ssh-key", key]
    if spec.access.api_access:
        argv.append("--api-access")
    for port in spec.firewall.inbound_ports:
        argv += ["--open-port", str(port)]
    if spec.backup.schedule != "none":
        argv += ["--backup", f"{spec.backup.schedule}:{spec.backup.keep}"]
    if spec.user_data_file is not None:
        argv += ["--user-data", spec.user_data_file]
    if spec.iso is not None:
        argv += ["--iso", spec.iso]
    if spec.state == "stopped":
        argv.append("--no-start")
    if spec.wait == "cloud-init":
        argv.append("--wait")
    elif spec.wait == "none":
        argv.append("--no-wait")
    return argv


def command_line(doc: VMDocument) -> str:
    return shlex.join(create_argv(doc))


def print_plan(the_plan: apply_mod.Plan, output: Output, *, done: bool) -> None:
    if output == Output.json:
        render.print_json(the_plan.to_dict())
        return
    colours = {"refuse": "red", "none": "dim", "create": "green"}
    for d in the_plan.decisions:
        colour = colours.get(d.action, "yellow")
        detail = wording.with_commands(d.detail, d.next_steps)
        out.print(f"[{colour}]{d.action:<8}[/] {d.name}  {detail}  [dim]({d.where})[/]")
    n = len(the_plan.changes)
    if the_plan.refusals:
        err.print(f"{len(the_plan.refusals)} refused: apply would change nothing")
    elif n == 0:
        err.print("no changes: every VM matches the file")
    else:
        err.print(f"{n} change{'s' if n != 1 else ''} {'made' if done else 'to make'}")


def register(app: typer.Typer) -> None:
    """Add spec, plan and apply to the `cloudlet` app."""

    @app.command("spec")
    def spec_(
        name: Annotated[str | None, typer.Argument(help="VM name")] = None,
        schema: Annotated[
            bool, typer.Option("--schema", help="print the JSON Schema of spec files")
        ] = False,
        output: Annotated[str, typer.Option("--output", "-o", help="yaml or json")] = "yaml",
    ) -> None:
        """A VM's spec as a file 'create --from' and 'apply' accept (or the schema)."""
        from cloudlet.engine import apply as apply_mod
        from cloudlet.spec import document

        if schema:
            sys.stdout.write(json.dumps(document.json_schema(), indent=2) + "\n")
            return
        if name is None:
            raise InvalidInput("give a VM name or --schema", hint="cloudlet spec web1 > web1.yaml")
        doc = apply_mod.export(open_engine(), name)
        sys.stdout.write(
            document.dump_json([doc]) if output == "json" else document.dump_yaml([doc])
        )

    @app.command("plan")
    def plan_(path: FileArg, output: OutputOpt = Output.table) -> None:
        """What 'apply' would do with a spec file, without doing it."""
        from cloudlet.engine import apply as apply_mod

        the_plan = apply_mod.plan(open_engine(), read_entries(path))
        print_plan(the_plan, output, done=False)
        if the_plan.refusals:
            raise typer.Exit(Conflict.exit_code)

    @app.command("apply")
    def apply_(
        path: Annotated[Path, typer.Option("--file", "-f", help="spec file (YAML); - for stdin")],
        output: OutputOpt = Output.table,
    ) -> None:
        """Create the file's VMs or bring them to its state; applying twice changes nothing."""
        from cloudlet.engine import apply as apply_mod

        engine = open_engine()
        entries = read_entries(path)
        with phases(f"applying {path}") as progress:
            the_plan = apply_mod.apply(engine, entries, progress=progress)
        for notice in engine.notices:
            err.print(f"[yellow]note:[/] {notice}")
        print_plan(the_plan, output, done=True)
