"""The `cloudlet` command: parse, call the engine, render. No policy lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cloudlet.cli import (
    api_commands,
    backup_commands,
    complete,
    copy_command,
    network_commands,
    quick_exit,
    run_command,
    spec_commands,
    storage_commands,
    terminal_commands,
    wording,
)
from cloudlet.cli.options import Output, Shell, VmArg
from cloudlet.cli.startup import lazy_root
from cloudlet.errors import CloudletError, InvalidInput, StillRunning
from cloudlet.spec.names import vm_name

# Rich, the engine and the database are imported when a command first uses them:
# `cloudlet --help` and `--version` load this module and never run a command.
if TYPE_CHECKING:
    from rich.markup import escape

    from cloudlet.cli import console as console_mod
    from cloudlet.cli import render
    from cloudlet.cli.progress import byte_progress as _byte_progress
    from cloudlet.cli.progress import phases as _phases
    from cloudlet.cli.render import err, out
    from cloudlet.engine import type_listing
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.factory import open_engine
    from cloudlet.host.run import exec_replace
    from cloudlet.spec.instance import parse_backup
else:
    from cloudlet.cli.lazy import lazy

    escape = lazy("rich.markup", "escape")
    console_mod = lazy("cloudlet.cli.console")
    exec_replace = lazy("cloudlet.host.run", "exec_replace")
    render = lazy("cloudlet.cli.render")
    _byte_progress = lazy("cloudlet.cli.progress", "byte_progress")
    _phases = lazy("cloudlet.cli.progress", "phases")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    type_listing = lazy("cloudlet.engine.type_listing")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")
    parse_backup = lazy("cloudlet.spec.instance", "parse_backup")

app = typer.Typer(
    name="cloudlet",
    help="Self-hosted cloud engine for virtual machines on QEMU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # Rich's help formatter costs every --help a tenth of a second
    context_settings={"max_content_width": 120},  # help uses a wide terminal's width
)
image_app = typer.Typer(help="Guest images.", no_args_is_help=True)
app.add_typer(image_app, name="image")
license_app = typer.Typer(help="Seats of proprietary image licences.", no_args_is_help=True)
app.add_typer(license_app, name="license")
storage_commands.register(app)  # pool, volume, snapshot, clone
network_commands.register(app)  # network, nic, port, firewall
backup_commands.register(app)  # backup, restore, export, import
terminal_commands.register(app)  # shell
api_commands.register(app)  # serve, token


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table, wide or json")]
ImageArg = Annotated[str, typer.Argument(help="image name", autocompletion=complete.images)]
NameArg = VmArg


def _print_version(value: bool) -> None:
    if value:
        from cloudlet.cli.version import version

        sys.stdout.write(f"cloudlet {version()}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            expose_value=False,
            help="Print cloudlet's version and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="also print cloudlet's log (what it does) to stderr")
    ] = False,
) -> None:
    """Self-hosted cloud engine for virtual machines on QEMU."""
    if debug:
        from cloudlet import logs  # only when asked: nothing heavy before parsing

        logs.to_stderr()


def _engine() -> Engine:
    return open_engine()


def _notices(engine: Engine) -> None:
    for notice in engine.notices:
        err.print(f"[yellow]note:[/] {notice}")


@app.command()
def create(
    name: Annotated[
        str | None, typer.Argument(help="VM name; none (in a terminal): the wizard")
    ] = None,
    image: Annotated[
        str, typer.Option("--image", "-i", help="image name", autocompletion=complete.images)
    ] = "tiny",
    type_: Annotated[
        str | None, typer.Option("--type", "-t", help="machine type (see 'cloudlet types')")
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="vCPUs (custom shape)")] = None,
    memory: Annotated[str | None, typer.Option(help="memory, e.g. 2G (custom shape)")] = None,
    disk_size: Annotated[str | None, typer.Option(help="root disk size, e.g. 20G")] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            help="nat (user-mode, default), none, or a virtual network (repeatable)",
            autocompletion=complete.vm_networks,
        ),
    ] = None,
    restrict_network: Annotated[
        bool, typer.Option("--restrict-network", help="NAT without any way out (restrict=on)")
    ] = False,
    arch: Annotated[
        str | None, typer.Option(help="guest architecture: x86_64, aarch64 (emulated)")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="modern (virtio) or legacy (i440fx, IDE, e1000, BIOS)")
    ] = "modern",
    user: Annotated[str | None, typer.Option(help="login user (cloud-init images)")] = None,
    ssh_key: Annotated[
        list[Path] | None, typer.Option("--ssh-key", help="SSH public key file (repeatable)")
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option("--user-data", help="your own #cloud-config file")
    ] = None,
    iso: Annotated[
        Path | None, typer.Option(help="install from this ISO onto an empty --disk-size disk")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="return when cloud-init has finished in the guest")
    ] = False,
    no_start: Annotated[bool, typer.Option("--no-start", help="create stopped")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="return once QEMU runs, before the guest agent")
    ] = False,
    location: Annotated[str, typer.Option(help="zone (this host: local); fixed")] = "local",
    containers: Annotated[
        bool, typer.Option("--containers", help="install podman (docker-compatible socket)")
    ] = False,
    volume: Annotated[
        list[str] | None, typer.Option("--volume", help="extra volume size (repeatable)")
    ] = None,
    open_port: Annotated[
        list[int] | None, typer.Option("--open-port", help="inbound port to open (repeatable)")
    ] = None,
    backup: Annotated[
        str, typer.Option(help="none, daily, hourly, or SCHEDULE:KEEP (e.g. weekly:4)")
    ] = "none",
    api_access: Annotated[
        bool, typer.Option("--api-access", help="an API token scoped to this VM")
    ] = False,
    from_: Annotated[
        Path | None, typer.Option("--from", help="create from a spec file (cloudlet spec)")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a VM from an image and start it (no name, in a terminal: the wizard)."""
    if from_ is not None:
        if name is not None:
            raise InvalidInput("give NAME or --from, not both", hint="the file names the VM")
        spec_commands.create_from_file(from_, output)
        return
    if name is None:
        from cloudlet.cli import wizard  # the wizard's imports cost every other command

        wizard.start(output)
        return
    from cloudlet.cli.create_body import body_from_flags  # only create needs pydantic models

    request = body_from_flags(
        name, image=image, type_name=type_, cpus=cpus, memory=memory, disk_size=disk_size,
        networks=tuple(network or ()), restrict_network=restrict_network, arch=arch,
        profile=profile, user=user, ssh_keys=tuple(ssh_key or ()), user_data=user_data,
        iso=iso, wait_cloud_init=wait, no_start=no_start, no_wait=no_wait, location=location,
        containers=containers, volumes=tuple(volume or ()), open_ports=tuple(open_port or ()),
        backup=backup, api_access=api_access,
    )  # fmt: skip
    engine = _engine()
    with _phases(f"creating {name}") as progress:
        vm = engine.create(name, request.body, key_files=request.key_files, progress=progress)
    _notices(engine)
    if output == Output.json:
        render.print_json(vm.to_dict())
    else:
        err.print(f"[green]{name}[/] is {vm.state}")
        render.instances_table([vm])


# The verbs Multipass, Docker and Incus users type: launch is listed, the others hidden.
app.command("launch", help="Same as create: create a VM from an image and start it.")(create)


@app.command("list")
def list_(
    output: OutputOpt = Output.table,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="also process VMs (cloudlet run)")
    ] = False,
) -> None:
    """List VMs: name, state, type, image and addresses (-o wide: every column)."""
    items = _engine().instances(include_process=all_)
    if output == Output.json:
        render.print_json([vm.to_dict() for vm in items])
    else:
        render.instances_table(items, wide=output == Output.wide)


@app.command()
def show(name: NameArg, output: OutputOpt = Output.table) -> None:
    """Everything about one VM."""
    vm = _engine().show(name)
    if output == Output.json:
        render.print_json(vm.to_dict())
    else:
        render.instance_detail(vm)


app.command("ls", hidden=True, help="Same as list.")(list_)
app.command("info", hidden=True, help="Same as show.")(show)


@app.command()
def start(
    name: NameArg,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="do not wait for the agent")] = False,
) -> None:
    """Start a stopped VM (waits until its guest agent answers)."""
    engine = _engine()
    with _phases(f"starting {name}") as progress:
        result = engine.start(name, wait=not no_wait, progress=progress)
    _notices(engine)
    render.said(result)


@app.command()
def stop(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", "-f", help="stop now, no ACPI")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="seconds to wait for the guest before forcing")
    ] = None,
) -> None:
    """Stop a VM: ACPI power button, then forced after the timeout."""
    with err.status(f"stopping {name} ..."):
        result = _engine().stop(name, force=force, timeout=timeout)
    render.said(result)


@app.command()
def restart(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", "-f", help="forced stop")] = False,
) -> None:
    """Stop and start a VM."""
    with _phases(f"restarting {name}") as progress:
        result = _engine().restart(name, force=force, progress=progress)
    render.said(result)


@app.command()
def pause(name: NameArg) -> None:
    """Freeze a VM's vCPUs (memory stays allocated)."""
    render.said(_engine().pause(name))


@app.command()
def resume(name: NameArg) -> None:
    """Unfreeze a paused VM."""
    render.said(_engine().resume(name))


def _can_ask() -> bool:
    """A question can be answered here: stdin is a terminal."""
    return sys.stdin.isatty()


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="VM names", autocompletion=complete.vms)],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="also a running VM (stopped at once)")
    ] = False,
) -> None:
    """Delete VMs: QEMU, disk overlay, sockets and records (a running one: --force)."""
    for name in names:
        vm_name(name)  # all checked before the first is deleted
    engine = _engine()
    # Every VM is checked (and a running one confirmed) before the first is deleted:
    # a typo or a running VM late in the list must not leave the list half done.
    forced = {name: force for name in names}
    for name in dict.fromkeys(names):
        try:
            engine.check_delete(name, force=force)
        except StillRunning as running:
            if not (_can_ask() and typer.confirm(f"{running.message}: stop and delete it?")):
                hint = f"'cloudlet stop {name}' first, or 'cloudlet delete --force {name}'"
                raise StillRunning(running.message, hint=hint) from None
            forced[name] = True
    for name in dict.fromkeys(names):
        render.said(engine.delete(name, force=forced[name]))


app.command("rm", hidden=True, help="Same as delete.")(delete)


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
)
def exec_(
    name: NameArg,
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="send this command's stdin to the program")
    ] = False,
    tty: Annotated[
        bool, typer.Option("--tty", "-t", help="run it on a terminal (interactive programs)")
    ] = False,
    user: terminal_commands.UserOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds before giving up")] = 600.0,
) -> None:
    """Run a command inside the guest through its agent; its output and exit code are returned.

    It runs as root (or --user) with that user's HOME, USER, LOGNAME, SHELL and PATH.
    """
    if command and command[0] == "--":
        command = command[1:]
    if tty:
        if not command:
            raise InvalidInput("no command given", hint="use: cloudlet exec -t NAME -- COMMAND")
        code = terminal_commands.run_on_terminal(_engine(), name, command, user=user, greet=False)
        raise typer.Exit(code)
    stdin = sys.stdin.buffer.read() if interactive else None
    result = _engine().exec(name, command, stdin=stdin, timeout=timeout, user=user)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if result.truncated:
        err.print("[yellow]warning: the guest agent truncated the output[/]")
    raise typer.Exit(result.shell_code)


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    name: NameArg,
    command: Annotated[list[str] | None, typer.Argument(help="a command to run, after --")] = None,
) -> None:
    """An SSH session (the system's OpenSSH client) with the VM's port, user and pinned key."""
    args = list(command or [])
    if args and args[0] == "--":
        args = args[1:]
    argv = _engine().ssh_argv(name, args)
    exec_replace(argv)


@app.command("ssh-config")
def ssh_config(name: NameArg) -> None:
    """An ssh_config block for the VM: cloudlet ssh-config web1 >> ~/.ssh/config"""
    sys.stdout.write(_engine().ssh_config(name))


app.command()(copy_command.cp)


@app.command()
def console(name: NameArg) -> None:
    """Attach to the serial console. Detach with Ctrl-]."""
    path = _engine().console_socket(name)
    if sys.stdin.isatty():
        err.print(
            f"[dim]connected to {name}'s serial console; detach with {console_mod.DETACH_KEY}[/]"
        )
    console_mod.attach(path)
    if sys.stdin.isatty():
        err.print(f"\r\n[dim]detached from {name}[/]")


@app.command()
def logs(
    name: NameArg,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="last N lines")] = None,
) -> None:
    """Print the serial console log."""
    log = _engine().serial_log_tail(name, tail)
    if log.data is None:
        err.print(f"{name} has no serial log yet (it has not been started)")
        return
    sys.stdout.buffer.write(log.data)


@app.command()
def types(output: OutputOpt = Output.table) -> None:
    """The machine types: general-purpose, memory- and compute-optimized."""
    if output == Output.json:
        render.print_json([t.to_dict() for t in type_listing.offers()])
        return
    render.types_table(_engine().machine_types())


@app.command()
def host(
    output: OutputOpt = Output.table,
    reprobe: Annotated[bool, typer.Option(help="probe KVM again")] = False,
) -> None:
    """The accelerator in use (and why), QEMU version, capacity used and free."""
    engine = _engine()
    with err.status("checking the host ..."):
        view = engine.reprobe_host() if reprobe else engine.host(probe=True)
    if output == Output.json:
        render.print_json(view.to_dict())
    else:
        render.host_detail(view)


@image_app.command("list")
def image_list(output: OutputOpt = Output.table) -> None:
    """Local images (built-in ones appear once built)."""
    items = _engine().images()
    if output == Output.json:
        render.print_json([i.to_dict() for i in items])
    else:
        render.images_table(items)


@image_app.command("show")
def image_show(name: ImageArg, output: OutputOpt = Output.table) -> None:
    """Everything about one image."""
    info = _engine().image_show(name).to_dict()
    if output == Output.json:
        render.print_json(info)
    else:
        render.key_values(info)


@image_app.command("build")
def image_build(
    name: Annotated[str, typer.Argument(help="built-in image: tiny or debian-12")] = "tiny",
    arch: Annotated[str | None, typer.Option(help="x86_64 or aarch64 (tiny)")] = None,
) -> None:
    """Build (or find cached) a built-in image from Debian packages."""
    from cloudlet.progress import stage_callback

    with _phases(f"building {name}") as progress:
        image = _engine().image_build(name, arch=arch, progress=stage_callback(progress))
    err.print(f"{image.name} ({image.arch}): {image.os} at {image.path}")


@image_app.command("import")
def image_import(
    path: Annotated[Path, typer.Argument(help="a local qcow2, raw or ISO file")],
    name: Annotated[str, typer.Option(help="image name")],
    format_: Annotated[str, typer.Option("--format", help="qcow2, raw or iso")] = "qcow2",
    licence: Annotated[str, typer.Option(help="'free' or a proprietary licence name")] = "free",
    os_family: Annotated[str, typer.Option("--os", help="linux, windows, macos ...")] = "linux",
    user: Annotated[str | None, typer.Option(help="its cloud-init default user")] = None,
) -> None:
    """Import a local disk image after safety checks (no backing or data files, no extents)."""
    with err.status(f"importing {path} ..."):
        info = _engine().image_import(
            path, name, format_, licence=licence, os_family=os_family, default_user=user
        )
    err.print(f"image {info.name} imported")


@image_app.command("catalog")
def image_catalog(output: OutputOpt = Output.table) -> None:
    """Official cloud images that 'cloudlet image pull' can fetch."""
    items = _engine().catalog()
    if output == Output.json:
        render.print_json([i.to_dict() for i in items])
        return
    for item in items:
        out.print(f"{item.name:<26} {item.title}  (user {item.default_user})")


@image_app.command("pull")
def image_pull(
    name: Annotated[
        str,
        typer.Argument(
            help="catalog name, e.g. ubuntu-24.04", autocompletion=complete.catalog_images
        ),
    ],
) -> None:
    """Download an official cloud image (resumable, checksum verified)."""
    with _byte_progress() as progress:
        info = _engine().image_pull(name, progress=progress)
    err.print(f"image {info.name} ready")


@image_app.command("delete")
def image_delete(name: ImageArg) -> None:
    """Delete an image; refused while a VM uses it."""
    render.said(_engine().image_delete(name))


@license_app.command("add")
def license_add(
    name: Annotated[str, typer.Argument(help="licence name, as images record it")],
    seats: Annotated[int, typer.Option(help="how many VMs may run at once")],
) -> None:
    """Register (or change) the seats of a proprietary licence."""
    info = _engine().license_add(name, seats)
    err.print(f"licence {info.name}: {info.seats} seats, {info.in_use} in use")


@license_app.command("list")
def license_list(output: OutputOpt = Output.table) -> None:
    """Licences with their seats and how many are in use."""
    items = _engine().licences()
    if output == Output.json:
        render.print_json([i.to_dict() for i in items])
        return
    for item in items:
        out.print(f"{item.name}  {item.in_use}/{item.seats} seats in use")


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish")]) -> None:
    """Print the shell completion script (see README, "Shell completion", to enable it)."""
    sys.stdout.write(complete.script(shell.value) + "\n")


app.command(context_settings={"allow_interspersed_args": False})(run_command.run)
spec_commands.register(app)


def fail(error: CloudletError) -> NoReturn:
    # escaped: messages carry paths and hints such as "[backup] path" that are not markup
    err.print(f"[red]error:[/] {escape(wording.error_line(error))}")
    sys.exit(error.exit_code)


def main() -> None:
    """Entry point: every CloudletError becomes one line and its exit code."""
    if complete.requested():  # the shell's Tab: answered without building any command
        from cloudlet.cli import completer

        sys.exit(completer.answer(app, lazy_root(app)))
    try:
        lazy_root(app)()  # builds only the command that runs (see cli/startup.py)
    except (Exception, KeyboardInterrupt) as exc:
        report(exc)


def report(exc: Exception | KeyboardInterrupt) -> NoReturn:
    """What a command that failed with ``exc`` says, and its exit code."""
    if isinstance(exc, CloudletError):
        fail(exc)
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    if os.environ.get("CLOUDLET_DEBUG"):
        raise exc
    err.print(
        f"[red]error:[/] internal error ({type(exc).__name__}: {exc}): "
        "run again with CLOUDLET_DEBUG=1 for the traceback and report it"
    )
    sys.exit(1)


def entry() -> None:
    """The full CLI as a process: ``main``, then the process ends without the
    interpreter's teardown (see cli/quick_exit.py)."""
    quick_exit.arm()
    try:
        main()
    except SystemExit as done:
        quick_exit.finish(done.code)
        raise
