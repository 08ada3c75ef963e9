"""The default user-mode NAT on passt: its argv, QEMU's stream netdev, the driver's choice,
and port forwards that passt can only take at the next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.driver.base import HostForward, LaunchConfig
from cloudlet.driver.qemu.argv import build_argv, uses_passt
from cloudlet.engine.engine import Engine
from cloudlet.errors import MissingDependency
from cloudlet.host import passt
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine

ID = "0b0e7a9e-5a6f-4f7e-9a33-1f1e2d3c4b5a"


def _config(**overrides: object) -> LaunchConfig:
    base: dict[str, object] = dict(
        instance_id=ID, name="web1", arch="x86_64", accel="tcg", cpus=1, memory_mib=512,
        disk=Path("/state/disk.qcow2"), disk_format="qcow2", runtime_dir=Path("/state/run"),
        serial_log=Path("/state/serial.log"), ssh_port=40022,
        host_forwards=(HostForward("tcp", 8080, 80), HostForward("udp", 5353, 53)),
    )  # fmt: skip
    base.update(overrides)
    return LaunchConfig(**base)  # type: ignore[arg-type]


def test_default_nat_uses_passt_and_restricted_keeps_slirp() -> None:
    assert uses_passt(_config())
    assert not uses_passt(_config(network_restrict=True))  # restrict=on lets nothing out
    assert not uses_passt(_config(network_mode="none"))
    argv = build_argv("qemu", _config(), net_fd=7)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "stream,id=net0,server=off,addr.type=fd,addr.str=7"
    assert not [a for a in argv if "hostfwd" in a]  # passt binds the forwards
    restricted = build_argv("qemu", _config(network_restrict=True))
    assert restricted[restricted.index("-netdev") + 1].startswith("user,id=net0,restrict=on,")


def test_passt_argv_does_not_map_the_gateway_to_the_host() -> None:
    forwards = [passt.Forward("tcp", 40022, 22), passt.Forward("tcp", 8080, 80)]
    argv = passt.argv("/usr/bin/passt", 5, forwards)
    assert "--no-map-gw" in argv and "--one-off" in argv and "--foreground" in argv
    assert argv[argv.index("--fd") + 1] == "5"
    # forwards listen on the host's loopback only, as slirp's did
    tcp = [argv[i + 1] for i, a in enumerate(argv) if a == "--tcp-ports"]
    assert tcp == ["127.0.0.1/40022:22", "127.0.0.1/8080:80"]
    assert argv[argv.index("--udp-ports") + 1] == "none"
    # the guest keeps slirp's addresses: images and process VMs configured for them work
    assert argv[argv.index("--address") + 1] == "10.0.2.15"
    assert argv[argv.index("--gateway") + 1] == "10.0.2.2"
    assert argv[argv.index("--dns-forward") + 1] == "10.0.2.3"


def test_passt_that_fails_to_start_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "passt.log"
    log.write_text(
        "Failed to send 47 bytes to syslog\nDon't run as root. Changing to nobody...\n"
        "No external routable interface for IPv4\nExternal interface not usable\n"
    )
    with pytest.raises(MissingDependency) as caught:
        passt.raise_failed(log)
    text = str(caught.value)
    assert "\n" not in text and "syslog" not in text
    assert "No external routable interface for IPv4; External interface not usable" in text


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home", cpus=8, memory=16 * GIB)


def test_forwards_of_a_running_passt_vm_wait_for_its_next_start(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody())
    monkeypatch.setattr(type(engine.driver), "live_host_forwards", lambda self, iid: False)
    ops = engine.networks
    said = ops.port_add("web1", "8080:80/tcp").message
    assert "at its next start" in said
    removed = ops.port_remove("web1", "8080/tcp").message
    assert "keeps it until its next start" in removed
