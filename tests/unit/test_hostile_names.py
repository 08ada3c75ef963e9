"""Every command that takes a name, with every kind of hostile name, through the real CLI.

Each must fail with exit 2 (InvalidInput) in one line and change nothing: the whole
state directory and a canary directory beside it hash the same before and after. A
command with a name-like parameter that is missing from the table fails the walk test,
so a new command cannot skip this suite.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cloudlet.cli import (
    api_commands,
    backup_commands,
    main,
    network_commands,
    spec_commands,
    storage_commands,
    terminal_commands,
    wizard,
)
from cloudlet.config import Paths, Settings
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine import factory
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.engine import Engine
from cloudlet.errors import InvalidInput, NotFound
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.store import ImageStore
from cloudlet.spec.document import VMBody
from cloudlet.spec.network import FirewallRule
from cloudlet.spec.units import GIB, MIB
from cloudlet.store.database import Database
from tests.fakes import FakeDisks
from tests.tree_hash import tree_hash

HOSTILE = {
    "dotdot": "..",
    "dot": ".",
    "slash": "a/b",
    "absolute": "/etc",
    "newline": "x\n",
    "nul": "a\x00b",
    "long": "a" * 300,
    "non-ascii": "é",
    "ssh-option": "-oProxyCommand=x",
}
H = "\x00HOSTILE\x00"  # where the hostile value goes in a command line

# (command, parameter) -> a command line. Positionals come after "--", so a value
# starting with "-" reaches the command instead of Click's option parser.
TABLE: dict[tuple[str, str], list[str]] = {
    ("create", "name"): ["create", "--no-start", "--image=seed", "--", H],
    ("create", "image"): ["create", "--no-start", f"--image={H}", "--", "ok1"],
    ("create", "network"): ["create", "--no-start", "--image=seed", f"--network={H}", "--", "ok1"],
    ("create", "user"): ["create", "--no-start", "--image=seed", f"--user={H}", "--", "ok1"],
    ("show", "name"): ["show", "--", H],
    # the aliases run the same functions, through their own names
    ("launch", "name"): ["launch", "--no-start", "--image=seed", "--", H],
    ("launch", "image"): ["launch", "--no-start", f"--image={H}", "--", "ok1"],
    ("launch", "network"): ["launch", "--no-start", "--image=seed", f"--network={H}", "--", "ok1"],
    ("launch", "user"): ["launch", "--no-start", "--image=seed", f"--user={H}", "--", "ok1"],
    ("info", "name"): ["info", "--", H],
    ("rm", "names"): ["rm", "--", "web1", H],
    ("start", "name"): ["start", "--", H],
    ("stop", "name"): ["stop", "--", H],
    ("restart", "name"): ["restart", "--", H],
    ("pause", "name"): ["pause", "--", H],
    ("resume", "name"): ["resume", "--", H],
    ("delete", "names"): ["delete", "--", "web1", H],  # web1 must survive too
    ("exec", "name"): ["exec", "--", H, "true"],
    ("exec", "user"): ["exec", f"--user={H}", "--", "web1", "true"],
    ("ssh", "name"): ["ssh", "--", H],
    ("shell", "name"): ["shell", "--", H],
    ("shell", "user"): ["shell", f"--user={H}", "--", "web1"],
    ("ssh-config", "name"): ["ssh-config", "--", H],
    ("console", "name"): ["console", "--", H],
    ("logs", "name"): ["logs", "--", H],
    ("cp", "source"): ["cp", "--", f"{H}:/etc/hostname", "got"],  # VM:PATH
    ("spec", "name"): ["spec", "--", H],
    ("clone", "source"): ["clone", "--", H, "ok1"],
    ("clone", "name"): ["clone", "--", "web1", H],
    ("clone", "snapshot"): ["clone", f"--snapshot={H}", "--", "web1", "ok1"],
    ("restore", "vm"): ["restore", "--latest", "--as=ok1", "--", H],
    ("restore", "backup"): ["restore", f"--backup={H}", "--as=ok1", "--", "web1"],
    ("restore", "as_name"): ["restore", "--latest", f"--as={H}", "--", "web1"],
    ("export", "vm"): ["export", "--", H, "out.tar"],
    ("import", "name"): ["import", f"--name={H}", "--", "in.tar"],
    ("run", "name"): ["run", f"--name={H}", "--", "seed", "--", "true"],
    ("run", "args"): ["run", "--", H, "--", "true"],
    ("image show", "name"): ["image", "show", "--", H],
    ("image build", "name"): ["image", "build", "--", H],
    ("image delete", "name"): ["image", "delete", "--", H],
    ("image pull", "name"): ["image", "pull", "--", H],
    ("image import", "name"): ["image", "import", f"--name={H}", "--", "d"],
    ("image import", "licence"): ["image", "import", "--name=ok1", f"--licence={H}", "--", "d"],
    ("image import", "user"): ["image", "import", "--name=ok1", f"--user={H}", "--", "d"],
    ("license add", "name"): ["license", "add", "--seats=1", "--", H],
    ("pool create", "name"): ["pool", "create", "--path=pool2", "--", H],
    ("pool delete", "name"): ["pool", "delete", "--", H],
    ("volume create", "name"): ["volume", "create", "--size=1G", "--", H],
    ("volume create", "pool"): ["volume", "create", "--size=1G", f"--pool={H}", "--", "ok1"],
    ("volume attach", "name"): ["volume", "attach", "--", H, "web1"],
    ("volume attach", "vm"): ["volume", "attach", "--", "data1", H],
    ("volume detach", "name"): ["volume", "detach", "--", H],
    ("volume resize", "name"): ["volume", "resize", "--", H, "2G"],
    ("volume delete", "name"): ["volume", "delete", "--", H],
    ("snapshot create", "vm"): ["snapshot", "create", "--", H, "s2"],
    ("snapshot create", "name"): ["snapshot", "create", "--", "web1", H],
    ("snapshot list", "vm"): ["snapshot", "list", "--", H],
    ("snapshot revert", "vm"): ["snapshot", "revert", "--", H, "s1"],
    ("snapshot revert", "name"): ["snapshot", "revert", "--", "web1", H],
    ("snapshot delete", "vm"): ["snapshot", "delete", "--", H, "s1"],
    ("snapshot delete", "name"): ["snapshot", "delete", "--", "web1", H],
    ("network create", "name"): ["network", "create", "--subnet=10.80.9.0/24", "--", H],
    ("network show", "name"): ["network", "show", "--", H],
    ("network delete", "name"): ["network", "delete", "--", H],
    ("nic add", "vm"): ["nic", "add", "--", H, "net1"],
    ("nic add", "network"): ["nic", "add", "--", "web1", H],
    ("nic remove", "vm"): ["nic", "remove", "--", H, "net1"],
    ("nic remove", "network"): ["nic", "remove", "--", "web1", H],
    ("nic list", "vm"): ["nic", "list", "--", H],
    ("port add", "vm"): ["port", "add", "--", H, "8080:80"],
    ("port add", "network"): ["port", "add", f"--network={H}", "--", "web1", "8080:80"],
    ("port list", "vm"): ["port", "list", "--", H],
    ("port remove", "vm"): ["port", "remove", "--", H, "8080"],
    ("firewall allow", "vm"): ["firewall", "allow", "--port=22", "--", H],
    ("firewall remove", "vm"): ["firewall", "remove", "--port=22", "--", H],
    ("firewall apply", "vm"): ["firewall", "apply", "--", H, "g1"],
    ("firewall apply", "group"): ["firewall", "apply", "--", "web1", H],
    ("firewall unapply", "vm"): ["firewall", "unapply", "--", H, "g1"],
    ("firewall unapply", "group"): ["firewall", "unapply", "--", "web1", H],
    ("firewall list", "vm"): ["firewall", "list", "--", H],
    ("firewall group create", "name"): ["firewall", "group", "create", "--allow=22", "--", H],
    ("firewall group delete", "name"): ["firewall", "group", "delete", "--", H],
    ("backup create", "vm"): ["backup", "create", "--", H],
    ("backup list", "vm"): ["backup", "list", "--", H],
    ("backup verify", "vm"): ["backup", "verify", "--", H],
    ("backup verify", "backup"): ["backup", "verify", f"--backup={H}", "--", "web1"],
    ("backup policy", "vm"): ["backup", "policy", "--every=1h", "--", H],
    ("backup prune", "vm"): ["backup", "prune", "--", H],
    ("token create", "name"): ["token", "create", f"--name={H}"],
    ("token revoke", "name"): ["token", "revoke", "--", H],
}
# Name-like parameters that are not names, and why.
NOT_NAMES = {
    ("firewall allow", "source"): "a CIDR, parsed as an address",
    ("firewall remove", "source"): "a CIDR, parsed as an address",
    ("firewall group create", "source"): "a CIDR, parsed as an address",
    ("create", "backup"): "a policy word (none, daily, SCHEDULE:KEEP)",
    ("launch", "backup"): "a policy word (none, daily, SCHEDULE:KEEP)",
}
NAME_LIKE = {"name", "names", "vm", "source", "network", "pool", "group", "image", "as_name",
             "backup", "snapshot", "licence", "user", "args"}  # fmt: skip


def _commands(app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """Every command of the app with its parameter names (from the Typer declarations)."""
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        params = list(inspect.signature(command.callback).parameters)
        yield f"{prefix}{name}", params
    for group in app.registered_groups:
        assert group.typer_instance is not None
        yield from _commands(group.typer_instance, f"{prefix}{group.name} ")


def test_every_command_with_a_name_is_in_the_table() -> None:
    found = {
        (cmd, p)
        for cmd, params in _commands(main.app)
        for p in params
        if p in NAME_LIKE or p.endswith("_name")
    }
    missing = found - TABLE.keys() - NOT_NAMES.keys()
    assert not missing, f"add these to TABLE (or NOT_NAMES, saying why): {sorted(missing)}"
    stale = (TABLE.keys() | NOT_NAMES.keys()) - found
    assert not stale, f"no such command parameters any more: {sorted(stale)}"


# ---------------------------------------------------------------- a real engine, fake driver
def _seed_image(images: Path) -> None:
    """An imported image 'seed' in the real image store's layout (version dir + current)."""
    version = images / "seed" / "v1"
    version.mkdir(parents=True)
    (version / "disk.qcow2").write_bytes(b"fake")
    meta = {"name": "seed", "disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img",
            "cmdline": "console=ttyS0", "min_disk_bytes": 256 * MIB, "guest_agent": True,
            "licence": "acme-os"}  # fmt: skip
    (version / "image.json").write_text(json.dumps(meta))
    (images / "seed" / "current").symlink_to("v1")


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Path, Path, Path]]:
    """A state directory with a VM, a volume, a snapshot, a group, a licence and a
    backup; a canary directory beside it; the CLI pointed at it."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    home, canary, cwd = top / "home", top / "canary", top / "cwd"
    for d in (canary / "sub", cwd):
        d.mkdir(parents=True)
    (canary / "file").write_text("canary\n")
    (canary / "sub" / "deep").write_text("deeper\n")
    (cwd / "d").write_bytes(b"\0" * 512)  # a file to import, never read
    settings = Settings(paths=Paths(home), stop_timeout=0.2)
    settings.paths.ensure()
    _seed_image(settings.paths.images)
    deps = EngineDeps(
        driver=FakeDriver(),
        images=ImageStore(settings.paths.images, settings.paths.cache / "debs"),
        disks=FakeDisks(),
        accel=lambda image: AccelVerdict("tcg", "fake host"),
        host_cpus=4,
        host_memory=8 * GIB,
        hypervisor_version=lambda: "fake",
        arches=lambda: {"x86_64": "fake-qemu"},
    )
    engine = Engine(settings, deps, Database(settings.paths.database))
    engine.create("web1", VMBody(image="seed", state="stopped"))
    storage = engine.storage
    storage.volume_create("data1", GIB)
    storage.snapshot_create("web1", "s1")
    engine.networks.group_create("g1", [FirewallRule(port=22)])
    engine.license_add("acme-os", 2)
    engine.backups.create("web1")
    with pytest.MonkeyPatch.context() as mp:
        for module in (main, storage_commands, network_commands, backup_commands,
                       spec_commands, terminal_commands, wizard, factory,
                       api_commands):  # fmt: skip
            mp.setattr(module, "open_engine", lambda *a, **k: engine)
        mp.chdir(cwd)  # relative names ("a/b") land here, and this is hashed too
        yield home, canary, cwd
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize(
    "argv", TABLE.values(), ids=[f"{c.replace(' ', '-')}:{p}" for c, p in TABLE]
)
def test_hostile_name_is_refused_in_one_line_and_changes_nothing(
    world: tuple[Path, Path, Path], argv: list[str], value: str
) -> None:
    before = [tree_hash(d) for d in world]
    result = CliRunner().invoke(main.app, [value if a == H else a.replace(H, value) for a in argv])
    error = result.exception
    assert isinstance(error, InvalidInput), (result.exit_code, result.output, error)
    assert error.exit_code == 2
    line = error.one_line()
    assert "\n" not in line and "\x00" not in line and len(line) < 400, line
    assert result.stdout == ""
    assert [tree_hash(d) for d in world] == before


# ---------------------------------------------------------------- names in spec files
SPEC_FIELDS = {
    "metadata.name": lambda v: {"metadata": {"name": v}, "spec": {"image": "seed"}},
    "spec.image": lambda v: {"metadata": {"name": "ok1"}, "spec": {"image": v}},
    "spec.networks": lambda v: {"metadata": {"name": "ok1"}, "spec": {"networks": [v]}},
    "spec.access.user": lambda v: {"metadata": {"name": "ok1"}, "spec": {"access": {"user": v}}},
    "spec.firewall.groups": lambda v: {
        "metadata": {"name": "ok1"},
        "spec": {"firewall": {"groups": [v]}},
    },
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("field", SPEC_FIELDS)
@pytest.mark.parametrize("command", [["apply", "-f"], ["create", "--no-start", "--from"]])
def test_hostile_name_in_a_spec_file_is_refused_and_changes_nothing(
    world: tuple[Path, Path, Path], command: list[str], field: str, value: str
) -> None:
    spec = world[2].parent / "spec.yaml"  # outside the hashed trees
    doc = {"apiVersion": "cloudlet/v1", "kind": "VM", **SPEC_FIELDS[field](value)}
    spec.write_text(json.dumps(doc))  # JSON is YAML, with every character escaped
    before = [tree_hash(d) for d in world]
    result = CliRunner().invoke(main.app, [*command, str(spec)])
    error = result.exception
    assert isinstance(error, InvalidInput), (result.exit_code, result.output, error)
    line = error.one_line()
    assert "\n" not in line and "\x00" not in line, line
    assert [tree_hash(d) for d in world] == before


# A valid name nobody has: still NotFound (exit 3). (Valid names may take a lock file in
# the state directory, so only what lies beside it must stay the same.)
UNKNOWN = {
    "show": ["show", "nosuch"],
    "image delete": ["image", "delete", "nosuch"],
    "image show": ["image", "show", "ubuntu-24.04"],
    "volume delete": ["volume", "delete", "nosuch"],
    "pool delete": ["pool", "delete", "nosuch"],
    "snapshot delete": ["snapshot", "delete", "web1", "nosuch"],
    "firewall group delete": ["firewall", "group", "delete", "nosuch"],
    "network show": ["network", "show", "nosuch"],
    "backup verify": ["backup", "verify", "web1", "--backup", "20200101T000000-abcdef"],
}


@pytest.mark.parametrize("argv", UNKNOWN.values(), ids=UNKNOWN.keys())
def test_a_valid_unknown_name_is_not_found(world: tuple[Path, Path, Path], argv: list[str]) -> None:
    before = [tree_hash(d) for d in world[1:]]
    result = CliRunner().invoke(main.app, argv)
    assert isinstance(result.exception, NotFound), (result.output, result.exception)
    assert result.exception.exit_code == 3
    assert [tree_hash(d) for d in world[1:]] == before
