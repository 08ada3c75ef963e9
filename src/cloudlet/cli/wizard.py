"""`cloudlet create` with no arguments in a terminal: the questions a cloud asks.

Every answer has a default (Enter accepts it) and a line of help. The answers become a
spec file (saved as NAME.yaml, or where the user says) and the VM is created from that
file, exactly as `cloudlet create --from NAME.yaml` would. Ctrl-C at any question
creates nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, IntPrompt, Prompt
from rich.table import Table

from cloudlet.cli import wizard_screens, wording
from cloudlet.cli.render import Output, err
from cloudlet.cli.spec_commands import command_line, create_entry
from cloudlet.engine import capacity, image_menu
from cloudlet.engine.engine import Engine
from cloudlet.engine.factory import open_engine
from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.spec import document
from cloudlet.spec.document import VMDocument
from cloudlet.spec.instance import BACKUP_PRESETS, LOCAL_ZONE
from cloudlet.spec.machine_types import CUSTOM, DEFAULT_TYPE, resolve_shape
from cloudlet.spec.names import login_user, vm_name
from cloudlet.spec.units import format_size, parse_size_with_unit

DEFAULT_IMAGE = "tiny"  # what `cloudlet create NAME` uses
CANCELLED = "cancelled: nothing was created"
MISSING = (
    "missing VM name: 'cloudlet create' without NAME starts the wizard, which needs a terminal"
)
MISSING_HINT = (
    "give NAME and flags (cloudlet create web1 --image tiny --type gp.small) or --from FILE"
)


@dataclass
class Answers:
    """What the wizard collected; ``document()`` turns it into a spec file."""

    name: str = ""
    location: str = LOCAL_ZONE
    type: str = DEFAULT_TYPE
    cpus: int | None = None
    memory: int | None = None
    disk_size: int | None = None
    volumes: list[int] = field(default_factory=list)
    containers: bool = False
    image: str = DEFAULT_IMAGE
    image_disk_size: int | None = None  # the image's own size, for the summary
    arch: str | None = None
    cloud_init: bool = False
    user: str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    api_access: bool = False
    inbound_ports: list[int] = field(default_factory=list)
    network: str = "nat"
    backup_schedule: str = "none"
    backup_keep: int = 0

    def document(self) -> VMDocument:
        spec: dict[str, Any] = {
            "image": self.image,
            "type": self.type,
            "location": self.location,
            "network": self.network,
            "containers": self.containers,
            "access": {
                "user": self.user,
                "ssh_keys": list(self.ssh_keys),
                "api_access": self.api_access,
            },
            "firewall": {"inbound_ports": list(self.inbound_ports)},
            "backup": {"schedule": self.backup_schedule, "keep": self.backup_keep},
        }
        if self.type == CUSTOM:
            spec["cpus"] = self.cpus
            spec["memory"] = document.size_text(self.memory or 0)
        if self.disk_size is not None:
            spec["disk_size"] = document.size_text(self.disk_size)
        if self.volumes:
            spec["volumes"] = [document.size_text(v) for v in self.volumes]
        if self.arch is not None:
            spec["arch"] = self.arch
        return VMDocument.model_validate(
            {
                "apiVersion": document.API_VERSION,
                "kind": "VM",
                "metadata": {"name": self.name},
                "spec": spec,
            }
        )


def start(output: Output) -> None:
    """Run the wizard (terminals only), save the spec file, create the VM."""
    if not sys.stdin.isatty():
        raise InvalidInput(MISSING, hint=MISSING_HINT)
    engine = open_engine()
    try:
        result = Wizard(engine, err).run()
    except (KeyboardInterrupt, EOFError):
        err.print(f"\n{CANCELLED}")
        raise typer.Exit(130) from None
    if result is None:
        return
    path, doc = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document.dump_yaml([doc]))
    except OSError as exc:
        raise InvalidInput(
            f"cannot save the spec to {path}: {exc.strerror}", hint="pick another path"
        ) from None
    err.print(f"saved the spec to {path}")
    (entry,) = document.parse_documents(path.read_text(), str(path))
    create_entry(entry, output)


class Wizard:
    def __init__(self, engine: Engine, console: Console) -> None:
        self.engine = engine
        self.console = console
        self.a = Answers()
        self._default_user: object = None
        self._has_ssh = False

    # ------------------------------------------------------------ helpers
    def step(self, number: int, title: str, help_text: str) -> None:
        self.say(f"\n[bold]{number}. {title}[/]")
        wizard_screens.help_line(self.console, help_text)

    def ask(
        self,
        question: str,
        default: str,
        *,
        choices: list[str] | None = None,
        check: Callable[[str], object] | None = None,
    ) -> str:
        """Ask until the answer passes ``check`` (a CloudletError explains a bad one)."""
        while True:
            answer = Prompt.ask(
                question,
                console=self.console,
                default=default,
                choices=choices,
                show_choices=choices is not None and len(choices) <= 6,
            ).strip()
            if check is None:
                return answer
            try:
                check(answer)
            except CloudletError as exc:
                self.error(exc)
                continue
            return answer

    def say(self, text: object) -> None:
        """Print wrapped to the terminal at word boundaries (the CLI's consoles soft-wrap)."""
        self.console.print(text, soft_wrap=False)

    def error(self, exc: CloudletError) -> None:
        self.say(f"[red]error:[/] {escape(wording.error_line(exc))}")

    def confirm(self, question: str, default: bool) -> bool:
        return Confirm.ask(question, console=self.console, default=default)

    # ------------------------------------------------------------ the questions
    def run(self) -> tuple[Path, VMDocument] | None:
        self.say("[bold]Create a VM[/]  (Enter accepts the default; Ctrl-C cancels)")
        self.name()
        if not self.kind():
            return None
        self.location()
        self.machine_type()
        self.storage()
        self.containers()
        self.image()
        self.access()
        self.connectivity()
        self.protection()
        return self.summary()

    def name(self) -> None:
        self.step(1, "Name", "lowercase letters, digits and '-', starting with a letter")
        taken = {vm.name for vm in self.engine.instances()}
        suggestion = next(f"vm{i}" for i in range(1, 10_000) if f"vm{i}" not in taken)

        def check(answer: str) -> None:
            vm_name(answer)
            if answer in taken:
                raise InvalidInput(f"a VM named {answer!r} already exists", hint="pick another")

        self.a.name = self.ask("Name", suggestion, check=check)

    def kind(self) -> bool:
        self.step(
            2,
            "Primary use",
            "system: a full OS that stays (a server, a desktop, a lab machine); "
            "process: one program in a throw-away VM that is gone when it exits",
        )
        if self.ask("Kind", "system", choices=["system", "process"]) == "system":
            return True
        self.say(
            "process VMs are run, not created: use "
            f"[bold]cloudlet run {DEFAULT_IMAGE} -- CMD[/] (nothing was created)"
        )
        return False

    def location(self) -> None:
        self.step(
            3, "Location", f"the zone of this host: {LOCAL_ZONE} (the only one for now); "
            "fixed once created"
        )  # fmt: skip
        self.a.location = self.ask("Location", LOCAL_ZONE, choices=[LOCAL_ZONE])

    def machine_type(self) -> None:
        self.step(
            4,
            "Machine type",
            "general-purpose (balanced), memory-optimized (8 GiB a vCPU), "
            "compute-optimized (more vCPUs), or custom (your own vCPUs and memory); "
            "the shares are of this host's cores and memory",
        )
        offers = {t.name: t for t in self.engine.machine_types()}
        wizard_screens.machine_types(self.console, list(offers.values()))

        def check(answer: str) -> None:
            offer = offers.get(answer)
            if offer is None and answer != CUSTOM:
                raise InvalidInput(
                    f"unknown machine type {answer!r}", hint="type a name from the table"
                )
            if offer is not None and offer.too_big is not None:
                raise InvalidInput(
                    f"{answer} does not fit this host: {offer.too_big}",
                    hint="pick a type marked as fitting, or custom",
                )

        self.a.type = self.ask("Machine type", DEFAULT_TYPE, check=check)
        if self.a.type != CUSTOM:
            return
        host = self.engine.host(probe=False)  # its limits, for a custom shape
        while True:
            cpus = self.ask("vCPUs", "2", check=_parse_cpus)
            memory = self.ask("Memory", "2G", check=_parse_memory)
            try:
                shape = resolve_shape(CUSTOM, _parse_cpus(cpus), _parse_memory(memory))
                too_big = capacity.too_big(
                    shape.cpus,
                    shape.memory,
                    cpu_limit=host.cpu_limit,
                    memory_limit=host.memory_limit,
                )
                if too_big is not None:
                    raise InvalidInput(
                        f"that shape does not fit this host: {too_big}",
                        hint="give fewer vCPUs or less memory",
                    )
            except CloudletError as exc:
                self.error(exc)
                continue
            self.a.cpus, self.a.memory = shape.cpus, shape.memory
            return

    def storage(self) -> None:
        self.step(
            5,
            "Storage",
            "root disk size ('image' keeps the image's size); extra volumes are made in "
            "the default pool and attached as NAME-vol0, NAME-vol1, ...",
        )
        disk = self.ask(
            "Disk size",
            "image",
            check=lambda t: (
                t == "image" or parse_size_with_unit(t, what="disk size", example_unit="G")
            ),
        )
        self.a.disk_size = None if disk == "image" else parse_size_with_unit(disk, example_unit="G")
        volumes = self.ask(
            "Extra volumes (sizes, comma separated)", "none", check=self._parse_volumes
        )
        self.a.volumes = self._parse_volumes(volumes)

    @staticmethod
    def _parse_volumes(text: str) -> list[int]:
        if text.strip() in ("", "none"):
            return []
        return [
            parse_size_with_unit(part, what="volume size", example_unit="G")
            for part in text.split(",")
            if part.strip()
        ]

    def containers(self) -> None:
        self.step(
            6,
            "Containers",
            "yes: podman is installed and its docker-compatible socket enabled at first "
            "boot (images with cloud-init only)",
        )
        self.a.containers = self.confirm("Will you run containers in this VM?", False)

    def image(self) -> None:
        help_text = "local images and the official catalog (pulled when chosen)"
        if self.a.containers:
            help_text += "; only images with cloud-init, which can install podman"
        self.step(7, "OS image", help_text)
        choices = self.engine.image_menu()  # all: one that cannot serve is refused with why
        default = image_menu.default_choice(choices, containers=self.a.containers)
        wizard_screens.images(
            self.console, image_menu.offered(choices, containers=self.a.containers)
        )

        def check(answer: str) -> None:
            image_menu.choose(choices, answer, containers=self.a.containers)

        while True:
            name = self.ask("Image", default.name if default else DEFAULT_IMAGE, check=check)
            choice = image_menu.choose(choices, name, containers=self.a.containers)
            self.say(f"licence: {escape(choice.licence)}")
            if choice.here:
                break
            if self.confirm(f"{name} is not here yet. Pull it now?", True):
                from cloudlet.cli.progress import byte_progress

                with byte_progress() as progress:
                    self.engine.image_pull(name, progress=progress)
                break
        self.a.image = choice.name
        self.a.arch = choice.arch
        self.a.cloud_init = choice.cloud_init
        self.a.image_disk_size = choice.disk_size or self._pulled_size(choice.name)
        self._default_user = choice.default_user
        self._has_ssh = choice.has_ssh

    def _pulled_size(self, name: str) -> int | None:
        size = self.engine.image_show(name).get("min_disk_bytes")
        return size if isinstance(size, int) and size > 0 else None

    def access(self) -> None:
        self.step(
            8,
            "Access",
            "login user and SSH key, API access, and inbound firewall ports "
            "(enforced on virtual networks; see cloudlet firewall)",
        )
        if self.a.cloud_init:
            self.a.user = self.ask(
                "Login user", str(self._default_user or "cloudlet"), check=login_user
            )
            keys = sorted(str(p) for p in (Path.home() / ".ssh").glob("*.pub"))
            for i, path in enumerate(keys, 1):
                self.say(f"  {i}) {escape(path)}")
            wizard_screens.help_line(
                self.console,
                "SSH public key: 'cloudlet' makes the VM its own key pair; "
                + ("or give a number above or the path of a .pub file" if keys
                   else "or give the path of a .pub file"),
            )  # fmt: skip

            def chosen(text: str) -> str:
                if text.isdigit() and 1 <= int(text) <= len(keys):
                    return keys[int(text) - 1]
                return str(Path(text).expanduser())

            key = self.ask(
                "SSH public key",
                "cloudlet",
                check=lambda t: t == "cloudlet" or _readable(Path(chosen(t))),
            )
            self.a.ssh_keys = [] if key == "cloudlet" else [chosen(key)]
        else:
            self.say(
                f"image {self.a.image} has no cloud-init: no login user or SSH key "
                "(use 'cloudlet exec' and 'cloudlet console')"
            )
        self.a.api_access = self.confirm("API access (a token scoped to this VM)?", False)
        ports = self.ask(
            "Inbound ports to open (comma separated)",
            "22" if self._has_ssh else "none",  # port 22 only where there is an SSH server
            check=_parse_ports,
        )
        self.a.inbound_ports = _parse_ports(ports)

    def connectivity(self) -> None:
        self.step(9, "Connectivity", "nat: outbound access and SSH forwarding; none: no network")
        self.a.network = self.ask("Network", "nat", choices=["nat", "none"])

    def protection(self) -> None:
        self.step(
            10, "Protection", "backup policy, run by 'cloudlet backup run-due': daily keeps 7, "
            "hourly keeps 24, custom asks the schedule and how many to keep"
        )  # fmt: skip
        choice = self.ask(
            "Backups",
            "none",
            choices=["none", "daily", "hourly", "custom"],
        )
        preset = BACKUP_PRESETS.get(choice)
        if preset is not None:
            self.a.backup_schedule, self.a.backup_keep = preset.schedule, preset.keep
            return
        self.a.backup_schedule = self.ask(
            "Schedule", "daily", choices=["hourly", "daily", "weekly"]
        )
        self.a.backup_keep = IntPrompt.ask("Keep how many", console=self.console, default=7)

    def summary(self) -> tuple[Path, VMDocument] | None:
        self.step(11, "Summary", "\\[fixed]: cannot be changed once created")
        a = self.a
        shape = resolve_shape(a.type, a.cpus, a.memory)
        backup = (
            "none" if a.backup_schedule == "none" else f"{a.backup_schedule}, keep {a.backup_keep}"
        )
        rows = [
            ("Name", a.name, True),
            ("Kind", "system VM", False),
            ("Location", a.location, True),
            ("Architecture", a.arch or "the image's", True),
            ("Machine type", f"{shape.name}: {shape.describe()}", False),
            ("Disk", _disk_text(a.disk_size, a.image_disk_size), False),
            ("Volumes", ", ".join(format_size(v) for v in a.volumes) or "none", False),
            ("Containers", "podman" if a.containers else "no", False),
            ("Image", a.image, True),
            ("Login", f"{a.user} with {'own key pair' if not a.ssh_keys else a.ssh_keys[0]}"
                      if a.cloud_init else "none (no cloud-init)", False),
            ("API access", "yes" if a.api_access else "no", False),
            ("Inbound ports", ", ".join(map(str, a.inbound_ports)) or "none", False),
            ("Network", a.network, False),
            ("Backups", backup, False),
        ]  # fmt: skip
        table = Table(box=None, pad_edge=False, show_header=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        table.add_column(no_wrap=True)
        for label, value, fixed in rows:
            table.add_row(label, escape(value), "[yellow]\\[fixed][/]" if fixed else "")
        self.say(table)
        doc = a.document()
        # one line the terminal soft-wraps, so it copies as one command
        self.console.print(f"same as: [bold]{escape(command_line(doc))}[/]", soft_wrap=True)
        default_path = wizard_screens.free_path(Path(), a.name)
        while True:
            path = Path(self.ask("Save the spec file to", str(default_path))).expanduser()
            if not path.exists() or self.confirm(f"{path} exists. Overwrite it?", False):
                break
        if not self.confirm(f"Create {a.name} now?", True):
            self.say("nothing was created")
            return None
        return path, doc


def _disk_text(chosen: int | None, image_size: int | None) -> str:
    if chosen is not None:
        return format_size(chosen)
    if image_size is not None:
        return f"{format_size(image_size)} (the image's size)"
    return "the image's size"


def _readable(path: Path) -> str:
    from cloudlet import cloudinit

    return cloudinit.load_public_key(path)


def _parse_cpus(text: str) -> int:
    if not text.isdigit():
        raise InvalidInput(f"invalid vCPU count {text!r}", hint="give a whole number such as 2")
    return int(text)


def _parse_memory(text: str) -> int:
    return parse_size_with_unit(text, what="memory size", example_unit="M")


def _parse_ports(text: str) -> list[int]:
    if text.strip() in ("", "none"):
        return []
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise InvalidInput(f"invalid port {part!r}", hint="use numbers from 1 to 65535")
        ports.append(int(part))
    return sorted(set(ports))
