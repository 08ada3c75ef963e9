"""One create request (issue 13): CLI flags, a spec file and the wizard's answers for the
same VM build equal VM bodies, and so the same VM; bad flags keep their one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main, spec_commands, wizard
from cloudlet.cli.options import Output
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine
from tests.unit.test_network import FakeHost
from tests.unit.test_wizard_screens import ENTERS, Typed

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me"
Seen = list[tuple[str, VMBody, tuple[Path, ...]]]


@pytest.fixture
def engine(short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A fake engine every frontend opens; HOME holds one key pair (~/.ssh/id_me)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_me.pub").write_text(KEY + "\n")
    (tmp_path / ".ssh" / "id_me").write_text("private\n")
    e = make_fake_engine(short_tmp / "h", cpus=2, memory=24 * GIB)
    for module in (main, spec_commands, wizard):
        monkeypatch.setattr(module, "open_engine", lambda: e)
    return e


@pytest.fixture
def seen(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Every (name, body, key files) a frontend hands to ``Engine.create``."""
    calls: Seen = []
    real = engine.create

    def spy(name: str, body: VMBody, **kwargs: object) -> object:
        key_files = kwargs.get("key_files", ())
        assert isinstance(key_files, tuple)
        calls.append((name, body, key_files))
        return real(name, body, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "create", spy)
    return calls


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, error.one_line()
    return result.exit_code, result.stderr


SPEC = """\
apiVersion: cloudlet/v1
kind: VM
metadata:
  name: web1
spec:
  image: cloudy
  type: gp.small
  disk_size: 4G
  arch: x86_64
  volumes: [1G]
  access:
    user: alice
    ssh_keys: [../.ssh/id_me.pub]   # relative to this file
    api_access: true
  firewall:
    inbound_ports: [22, 80]
  backup:
    schedule: daily
    keep: 7
"""

FLAGS = (
    "create", "web1", "--image", "cloudy", "--type", "gp.small", "--disk-size", "4G",
    "--arch", "x86_64", "--volume", "1G", "--user", "alice", "--ssh-key", "~/.ssh/id_me.pub",
    "--api-access", "--open-port", "22", "--open-port", "80", "--backup", "daily",
)  # fmt: skip

ANSWERS = [
    "web1", "", "", "gp.small", "4G", "1G", "", "cloudy",  # name .. image
    "alice", "1", "y", "22,80", "nat", "daily",  # access, network, backups
    "", "",  # save to web1.yaml, create now
]  # fmt: skip


class Terminal(Typed):
    def isatty(self) -> bool:
        return True


def test_flags_spec_file_and_wizard_build_the_same_body_and_vm(
    engine: Engine, seen: Seen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = []
    # 1. flags
    assert cli(*FLAGS)[0] == 0
    specs.append(engine.spec("web1"))
    engine.delete("web1", force=True)
    # 2. a spec file, its key path relative to the file
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "web1.yaml").write_text(SPEC)
    assert cli("create", "--from", "specs/web1.yaml")[0] == 0
    specs.append(engine.spec("web1"))
    engine.delete("web1", force=True)
    # 3. the wizard's answers
    monkeypatch.setattr("sys.stdin", Terminal("\n".join(ANSWERS) + "\n" * ENTERS, io.StringIO()))
    wizard.start(Output.table)
    specs.append(engine.spec("web1"))

    names = {name for name, _, _ in seen}
    bodies = [body for _, body, _ in seen]
    key_files = {files for _, _, files in seen}
    assert names == {"web1"} and len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert key_files == {(tmp_path / ".ssh" / "id_me.pub",)}  # absolute, as the key was found
    body = bodies[0]
    assert body.access.ssh_keys == [KEY]  # the key's text, not a path of this host
    assert body.user_data_file is None and body.state == "running" and body.wait == "agent"
    assert specs[0] == specs[1] == specs[2]
    assert specs[0].access.ssh_private_key == str(tmp_path / ".ssh" / "id_me")
    assert specs[0].firewall.inbound_ports == (22, 80) and specs[0].volumes == (GIB,)


def test_network_flags_map_onto_network_and_networks(
    engine: Engine, seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeHost().install(monkeypatch)  # bridges and dnsmasq, in memory
    engine.networks.network_create("backend", "10.80.1.0/24")
    engine.networks.network_create("dmz", "10.80.2.0/24")
    assert cli("create", "a1", "--network", "backend", "--network", "dmz", "--no-start")[0] == 0
    assert cli("create", "a2", "--network", "nat", "--network", "backend", "--no-wait")[0] == 0
    assert cli("create", "a3", "--network", "none", "--wait", "--no-start")[0] == 0
    got = {name: (b.network, b.networks, b.state, b.wait) for name, b, _ in seen}
    assert got == {
        "a1": ("none", ["backend", "dmz"], "stopped", "agent"),
        "a2": ("nat", ["backend"], "running", "none"),
        "a3": ("none", [], "stopped", "cloud-init"),
    }
    assert engine.spec("a1").network.mode == "none"
    assert [n.network for n in engine.spec("a2").network.nics] == ["backend"]


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--cpus", "0"], 2, "invalid vCPU count"),
        (["--cpus", "300"], 2, "invalid vCPU count"),
        (["--profile", "future"], 2, "unknown profile 'future': use modern or legacy"),
        (["--arch", "sparc"], 2, "unknown architecture 'sparc'"),
        (["--open-port", "0"], 2, "invalid port 0: open ports from 1 to 65535"),
        (["--image", "../etc"], 2, "image name"),
        (["--user", "Root!"], 2, "login"),
        (["--network", "nat", "--network", "none"], 2, "contradict"),
        (["--memory", "512"], 2, "memory 512 has no unit"),
        (["--ssh-key", "/nonexistent/id.pub"], 2, "cannot read SSH public key"),
        (["--user-data", "/nonexistent/cc.yaml"], 2, "cannot read user-data /nonexistent"),
    ],
)
def test_bad_flags_are_one_line_and_create_nothing(
    engine: Engine, seen: Seen, flags: list[str], code: int, message: str
) -> None:
    got_code, line = cli("create", "web1", "--image", "cloudy", *flags)
    assert got_code == code and message in line, line
    assert "\n" not in line and seen == [] and engine.instances() == []


def test_the_engine_refuses_a_host_path_for_user_data(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="user_data_file names a file") as exc:
        engine.create("web1", VMBody(image="cloudy", user_data_file="/etc/passwd"))
    assert exc.value.hint == "read the file and give its text as user_data"
    assert engine.instances() == []
