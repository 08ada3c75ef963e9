"""`cloudlet list` at 80 columns, `-o wide`, and SSH shown only where a VM has it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import AccessDoc, VMBody
from tests.fakes import make_fake_engine
from tests.unit.test_network import FakeHost

LONGEST = "n" * 63  # the longest VM name there is
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",)


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    FakeHost().install(monkeypatch)
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    e.networks.network_create("backend-01", "10.80.1.0/24")
    e.create("web-frontend-01", VMBody(networks=["backend-01"]))
    e.create(
        "db-primary",
        VMBody(
            image="cloudy",
            network="none",
            networks=["backend-01"],
            access=AccessDoc(ssh_keys=list(KEY)),
        ),
    )
    e.create("cloud1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=list(KEY))))
    e.create("dark", VMBody(network="none", state="stopped"))
    return e


def listing(*args: str, columns: int = 80) -> list[str]:
    result = CliRunner().invoke(main.app, ["list", *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _addresses(engine: Engine) -> list[str]:
    return [f"{ip} ({net})" for vm in engine.instances() for net, ip in vm.addresses.items()]


def test_the_default_list_fits_80_columns_with_names_and_addresses_whole(engine: Engine) -> None:
    lines = listing()
    assert lines[0].split() == ["NAME", "STATE", "TYPE", "IMAGE", "ADDRESSES"]
    assert all(len(line.rstrip()) <= 80 for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    for vm in engine.instances():
        assert any(line.split()[:1] == [vm.name] for line in lines), vm.name
    addresses = _addresses(engine)
    assert len(addresses) == 4  # web: nat + backend; db: backend; cloud1: nat
    for address in addresses:
        assert address in text  # whole, never cut with an ellipsis
    assert "…" not in text and "127.0.0.1" not in text


def test_a_name_too_long_for_80_columns_runs_long_instead_of_being_cut(engine: Engine) -> None:
    engine.create(LONGEST, VMBody(networks=["backend-01"]))
    lines = listing()
    row = next(i for i, line in enumerate(lines) if line.startswith(LONGEST))
    assert lines[row].split()[:4] == [LONGEST, "running", "gp.small", "tiny"]
    assert "10.0.2.15 (nat)" in lines[row]
    assert "10.80.1." in lines[row + 1] and "(backend-01)" in lines[row + 1]
    assert "…" not in "\n".join(lines)


def test_wide_shows_every_column_and_ssh_only_where_the_vm_has_it(engine: Engine) -> None:
    lines = listing("-o", "wide")
    assert lines[0].split() == [
        "NAME", "STATE", "TYPE", "VCPUS", "MEMORY", "DISK", "IMAGE", "ARCH", "ADDRESSES",
        "SSH", "ACCEL",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    cloud1, web, dark = engine.show("cloud1"), engine.show("web-frontend-01"), engine.show("dark")
    assert cloud1.ssh_access and cloud1.ssh_port is not None
    assert f"127.0.0.1:{cloud1.ssh_port}" in rows["cloud1"]
    # tiny has a forward but no SSH server; a VM without NAT has no forward at all
    assert not web.ssh_access and web.ssh_port is not None
    assert "127.0.0.1" not in rows["web-frontend-01"]
    assert "127.0.0.1" not in rows["dark"] and dark.ssh_port is None
    assert "1 vCPU" in rows["web-frontend-01"] and "1 GiB" in rows["web-frontend-01"]
    assert "10.0.2.15 (nat), 10.80.1." in rows["web-frontend-01"]  # one line per VM
    assert rows["web-frontend-01"].split()[-1] == "tcg"
    assert "…" not in "\n".join(lines)


def test_show_says_when_a_vm_has_no_ssh(engine: Engine) -> None:
    def ssh_line(name: str) -> str:
        result = CliRunner().invoke(main.app, ["show", name])
        return next(line for line in result.stdout.splitlines() if line.startswith("SSH"))

    port = engine.show("cloud1").ssh_port
    assert ssh_line("cloud1").split(None, 2)[2] == f"127.0.0.1:{port} -> 22"
    assert ssh_line("web-frontend-01").split(None, 2)[2] == "none (image has no SSH)"
    assert ssh_line("dark").split(None, 2)[2] == "-"
    assert engine.show("cloud1").to_dict()["ssh_access"] is True
