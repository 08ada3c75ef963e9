"""LVM pools on a recording fake of the LVM commands: command sequences and refusals."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import boot_disks
from cloudlet.errors import (
    CapacityExceeded,
    Conflict,
    HostCommandError,
    InvalidInput,
    MissingDependency,
)
from cloudlet.spec.document import VMBody
from cloudlet.storage import lvm
from tests.fakes import make_fake_engine

MIB = 1 << 20
EXTENT = 4 * MIB
DEV_SIZE = 1024 * MIB


class FakeLvm:
    """Just enough LVM state to answer the commands cloudlet runs, and a log of them."""

    def __init__(self) -> None:
        self.log: list[list[str]] = []
        self.pvs: dict[str, str] = {}  # device -> vg ("" when only labelled)
        self.vgs: dict[str, dict[str, int]] = {}  # vg -> lv name -> size
        self.thin_ok = True
        self.blkid: dict[str, str] = {}  # device -> blkid export text
        self.lsblk: dict[str, dict[str, Any]] = {}
        self.fail: str | None = None  # a command name that fails

    def __call__(self, argv: Sequence[str], *, check: bool = True) -> Any:
        args = list(argv)
        self.log.append(args)
        out, code = self._answer(args)
        if check and code != 0:
            from cloudlet.errors import HostCommandError

            raise HostCommandError(args, code, out, "fake failure")
        return subprocess.CompletedProcess(args, code, out.encode(), b"")

    def _report(self, key: str, rows: list[dict[str, str]]) -> str:
        return json.dumps({"report": [{key: rows}]})

    def _answer(self, a: list[str]) -> tuple[str, int]:
        cmd = a[0]
        if cmd == self.fail:
            return "", 5
        if cmd == "lsblk":
            devs = [x for x in a[1:] if x.startswith("/dev/")]
            nodes = [
                self.lsblk.get(d, {"path": d, "type": "loop", "mountpoint": None}) for d in devs
            ]
            return json.dumps({"blockdevices": nodes}), 0
        if cmd == "blkid":
            text = self.blkid.get(a[-1], "")
            if a[-1] in self.pvs:
                text = "TYPE=LVM2_member\n"
            return text, 0 if text else 2
        if cmd == "modprobe":
            return "", 0
        if cmd == "dmsetup":
            return ("thin-pool v1.22.0\nstriped v1.6.0\n" if self.thin_ok else "striped\n"), 0
        if cmd == "pvcreate":
            for d in a[2:]:
                self.pvs[d] = ""
            return "", 0
        if cmd == "vgcreate":
            vg, devs = a[2], a[3:]
            self.vgs[vg] = {}
            for d in devs:
                self.pvs[d] = vg
            return "", 0
        if cmd == "lvcreate":
            vg, name = a[-1], a[a.index("--name") + 1]
            if "thin-pool" in a:
                self.vgs[vg][name] = self._vg_size(vg) * 90 // 100 // EXTENT * EXTENT
            elif "--virtualsize" in a:
                self.vgs[vg][name] = int(a[a.index("--virtualsize") + 1].rstrip("b"))
            else:
                self.vgs[vg][name] = int(a[a.index("--size") + 1].rstrip("b"))
            return "", 0
        if cmd == "lvextend":
            vg, lv = a[-1].split("/")
            self.vgs[vg][lv] = int(a[a.index("--size") + 1].rstrip("b"))
            return "", 0
        if cmd == "lvremove":
            vg, lv = a[-1].split("/")
            del self.vgs[vg][lv]
            return "", 0
        if cmd == "vgremove":
            vg = a[-1]
            self.vgs.pop(vg)
            for d, owner in list(self.pvs.items()):
                if owner == vg:
                    self.pvs[d] = ""
            return "", 0
        if cmd == "pvremove":
            for d in a[2:]:
                self.pvs.pop(d)
            return "", 0
        if cmd == "vgs":
            names = [a[-1]] if not a[-1].startswith("vg_") else list(self.vgs)
            rows = [
                {
                    "vg_name": vg,
                    "vg_size": str(self._vg_size(vg)),
                    "vg_free": str(self._vg_size(vg) - sum(self.vgs[vg].values())),
                    "vg_extent_size": str(EXTENT),
                }
                for vg in names
                if vg in self.vgs
            ]
            return self._report("vg", rows), 0 if rows or names == list(self.vgs) else 5
        if cmd == "lvs":
            vg = a[-1]
            if vg not in self.vgs:
                return "", 5
            rows = [
                {
                    "lv_name": lv,
                    "lv_size": str(size),
                    "data_percent": "10.00" if "thinpool" in self.vgs[vg] else "",
                }
                for lv, size in self.vgs.get(vg, {}).items()
            ]
            return self._report("lv", rows), 0
        if cmd == "pvs":
            rows = [{"pv_name": d, "vg_name": vg} for d, vg in self.pvs.items()]
            return self._report("pv", rows), 0
        raise AssertionError(f"unexpected command {a}")

    def _vg_size(self, vg: str) -> int:
        return sum(DEV_SIZE - EXTENT for d, owner in self.pvs.items() if owner == vg)

    def commands(self) -> list[str]:
        """The commands that change something, as 'name args' strings."""
        readers = {"lsblk", "blkid", "vgs", "lvs", "pvs", "dmsetup", "modprobe"}
        return [" ".join(a) for a in self.log if a[0] not in readers]


@pytest.fixture
def fake_lvm(monkeypatch: pytest.MonkeyPatch) -> FakeLvm:
    fake = FakeLvm()
    monkeypatch.setattr(lvm, "run", fake)
    monkeypatch.setattr(lvm, "device_mapper_available", lambda: True)
    monkeypatch.setattr(lvm, "_is_block_device", lambda path: path.startswith("/dev/loop"))
    monkeypatch.setattr(lvm.shutil, "which", lambda program: f"/usr/sbin/{program}")
    return fake


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


@pytest.fixture
def ops(engine: Engine) -> StorageService:
    return engine.storage


DEVS = ("/dev/loop7", "/dev/loop8")


def test_pool_over_two_devices_holds_a_thin_volume_larger_than_either(
    ops: StorageService, fake_lvm: FakeLvm
) -> None:
    pool = ops.pool_create("big", kind="lvm", devices=DEVS)
    assert fake_lvm.commands() == [
        "pvcreate --yes /dev/loop7 /dev/loop8",
        "vgcreate --yes cloudlet-big /dev/loop7 /dev/loop8",
        "lvcreate --yes --type thin-pool --extents 90%FREE --name thinpool cloudlet-big",
    ]
    assert (pool.kind, pool.path) == ("lvm", "/dev/cloudlet-big")
    assert pool.fs_total > DEV_SIZE and pool.limit == int(pool.fs_total * 2.0)
    fake_lvm.log.clear()

    vol = ops.volume_create("data1", 1534 * MIB, pool="big")
    assert fake_lvm.commands() == [
        "lvcreate --yes --name vol-data1 --type thin --virtualsize 1610612736b "
        "--thinpool thinpool cloudlet-big"
    ]
    assert vol.size == 1536 * MIB  # whole extents
    assert (vol.format, vol.path) == ("raw", "/dev/cloudlet-big/vol-data1")
    assert vol.allocated == vol.size // 10  # data_percent of the thin LV
    assert vol.size > DEV_SIZE
    (listed,) = [p for p in ops.pools() if p.name == "big"]
    assert (listed.volumes, listed.committed) == (1, vol.size)

    # beyond the thin limit (2 x the thin pool) is refused before lvcreate runs
    fake_lvm.log.clear()
    with pytest.raises(CapacityExceeded, match=r"pool big cannot take .* thin pool\)"):
        ops.volume_create("huge", 4 << 30, pool="big")
    assert fake_lvm.commands() == []


def test_attach_resize_detach_delete_and_pool_delete(
    engine: Engine, ops: StorageService, fake_lvm: FakeLvm
) -> None:
    ops.pool_create("big", kind="lvm", devices=DEVS)
    ops.volume_create("data1", 64 * MIB, pool="big")
    engine.create("web1", VMBody())
    ops.volume_attach("data1", "web1")
    assert isinstance(engine.driver, FakeDriver)
    (disk,) = boot_disks(engine, engine.show("web1").id)
    assert (disk.format, disk.protocol) == ("raw", "host_device")
    assert disk.path == Path("/dev/cloudlet-big/vol-data1")

    fake_lvm.log.clear()
    message = ops.volume_resize("data1", 1099 * MIB).message  # rounded up to 1100 MiB
    assert "online" in message
    assert fake_lvm.commands() == ["lvextend --yes --size 1153433600b cloudlet-big/vol-data1"]
    assert ops.volume("data1").size == 1100 * MIB

    with pytest.raises(Conflict, match="still holds volumes: data1"):
        ops.pool_delete("big")
    ops.volume_detach("data1")
    fake_lvm.log.clear()
    ops.volume_delete("data1")
    fake_lvm.vgs["cloudlet-big"]["mine"] = EXTENT  # an LV someone else made is never removed
    with pytest.raises(Conflict, match="LVs cloudlet does not know: mine"):
        ops.pool_delete("big")
    del fake_lvm.vgs["cloudlet-big"]["mine"]
    ops.pool_delete("big")
    assert fake_lvm.commands() == [
        "lvremove --yes cloudlet-big/vol-data1",
        "lvremove --yes cloudlet-big/thinpool",
        "vgremove --yes cloudlet-big",
        "pvremove --yes /dev/loop7 /dev/loop8",
    ]
    assert fake_lvm.pvs == {} and fake_lvm.vgs == {}
    assert [p.name for p in ops.pools()] == ["default"]


def test_without_thin_provisioning_volumes_are_plain_lvs_within_the_vg(
    ops: StorageService, fake_lvm: FakeLvm
) -> None:
    fake_lvm.thin_ok = False
    pool = ops.pool_create("big", kind="lvm", devices=DEVS)
    assert fake_lvm.commands() == [
        "pvcreate --yes /dev/loop7 /dev/loop8",
        "vgcreate --yes cloudlet-big /dev/loop7 /dev/loop8",
    ]
    assert any("thin provisioning is not available" in n for n in ops.notices)
    assert pool.limit == pool.fs_total  # no overcommit for thick LVs
    fake_lvm.log.clear()
    ops.volume_create("data1", 1534 * MIB, pool="big")
    assert fake_lvm.commands() == [
        "lvcreate --yes --name vol-data1 --size 1610612736b --wipesignatures y --zero y "
        "cloudlet-big"
    ]
    with pytest.raises(CapacityExceeded):
        ops.volume_create("data2", 640 * MIB, pool="big")

    # a VG removed behind cloudlet's back does not break pool list
    fake_lvm.vgs.pop("cloudlet-big")
    (big,) = [p for p in ops.pools() if p.name == "big"]
    assert (big.fs_total, big.allocated, big.volumes) == (0, 0, 1)


@pytest.mark.parametrize(
    ("devices", "setup", "match"),
    [
        (("/dev/loop7", "/tmp/file"), None, "/tmp/file is not under /dev"),
        (("/dev/loop7", "/dev/null"), None, "/dev/null is not a block device"),
        (("/dev/loop7", "/dev/loop7"), None, "named twice"),
        ((), None, "at least one block device"),
        (DEVS, ("lsblk", {"path": "/dev/loop8", "mountpoint": "/mnt"}), "/dev/loop8 is mounted"),
        (
            DEVS,
            ("lsblk", {"path": "/dev/loop8", "children": [{"path": "/dev/loop8p1"}]}),
            "partitioned or in use",
        ),
        (DEVS, ("blkid", "PTTYPE=gpt\n"), "carries a gpt partition table"),
        (DEVS, ("blkid", "TYPE=ext4\n"), "holds a ext4 file system"),
        (DEVS, ("pv", ""), "/dev/loop8 is already an LVM physical volume"),
    ],
)
def test_devices_in_use_are_refused_before_anything_changes(
    ops: StorageService,
    fake_lvm: FakeLvm,
    devices: tuple[str, ...],
    setup: tuple[str, Any] | None,
    match: str,
) -> None:
    if setup is not None:
        kind, value = setup
        if kind == "lsblk":
            fake_lvm.lsblk["/dev/loop8"] = {"type": "loop", "mountpoint": None, **value}
        elif kind == "blkid":
            fake_lvm.blkid["/dev/loop8"] = value
        else:
            fake_lvm.pvs["/dev/loop8"] = value
    with pytest.raises((InvalidInput, Conflict), match=match) as info:
        ops.pool_create("big", kind="lvm", devices=devices)
    assert "\n" not in info.value.one_line()
    assert fake_lvm.commands() == []
    assert [p.name for p in ops.pools()] == ["default"]


def test_refused_without_device_mapper_and_when_the_vg_exists(
    ops: StorageService, fake_lvm: FakeLvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_lvm.vgs["cloudlet-big"] = {}
    with pytest.raises(Conflict, match="volume group cloudlet-big already exists"):
        ops.pool_create("big", kind="lvm", devices=DEVS)
    monkeypatch.setattr(lvm, "device_mapper_available", lambda: False)
    with pytest.raises(InvalidInput, match="no device-mapper"):
        ops.pool_create("big2", kind="lvm", devices=DEVS)
    assert fake_lvm.commands() == []


def test_a_failed_step_undoes_the_earlier_ones(ops: StorageService, fake_lvm: FakeLvm) -> None:
    fake_lvm.fail = "lvcreate"
    with pytest.raises(Exception, match="lvcreate"):
        ops.pool_create("big", kind="lvm", devices=DEVS)
    assert fake_lvm.commands()[-2:] == [
        "vgremove --yes cloudlet-big",
        "pvremove --yes /dev/loop7 /dev/loop8",
    ]
    assert fake_lvm.pvs == {} and fake_lvm.vgs == {}
    assert [p.name for p in ops.pools()] == ["default"]


def test_cli_pool_create_lvm_list_and_usage_errors(
    engine: Engine, fake_lvm: FakeLvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cloudlet.cli import main, storage_commands
    from cloudlet.errors import CloudletError

    monkeypatch.setattr(storage_commands, "open_engine", lambda: engine)

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main.app, list(args))
        if isinstance(result.exception, CloudletError):
            return result.exception.exit_code, result.exception.one_line()
        return result.exit_code, result.stdout + result.stderr

    code, text = cli("pool", "create", "big", "--lvm", *DEVS)
    assert code == 0 and "pool big created at /dev/cloudlet-big" in text, text
    assert fake_lvm.commands()[:2] == [
        "pvcreate --yes /dev/loop7 /dev/loop8",
        "vgcreate --yes cloudlet-big /dev/loop7 /dev/loop8",
    ]
    code, text = cli("pool", "list", "-o", "json")
    (big,) = [p for p in json.loads(text) if p["name"] == "big"]
    assert big["kind"] == "lvm" and big["fs_total"] > DEV_SIZE
    for args in (("x",), ("x", "--lvm"), ("x", "/dev/loop7"), ("x", "--path", "/p", "--lvm")):
        code, text = cli("pool", "create", *args)
        assert code == 2, (args, text)


def test_device_mapper_module_is_loaded_before_the_answer_is_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Debian kernel has dm-mod as a module, not loaded until used: the real run in a
    guest found cloudlet refusing such a kernel as one without device-mapper."""
    misc = tmp_path / "misc"
    misc.write_text(" 62 vga_arbiter\n")
    monkeypatch.setattr(lvm, "PROC_MISC", misc)
    ran: list[list[str]] = []

    def modprobe(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        ran.append(list(argv))
        if loads:
            misc.write_text(misc.read_text() + "236 device-mapper\n")
            return subprocess.CompletedProcess(list(argv), 0, b"", b"")
        return subprocess.CompletedProcess(list(argv), 1, b"", b"module dm-mod not found")

    monkeypatch.setattr(lvm, "run", modprobe)
    loads = False  # this build host: no such module
    assert lvm.device_mapper_available() is False
    assert ran == [["modprobe", "dm-mod"]]
    loads = True
    assert lvm.device_mapper_available() is True
    ran.clear()
    assert lvm.device_mapper_available() is True  # loaded now: nothing to run
    assert ran == []


def test_lvm_commands_create_device_nodes_themselves_without_udev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without udevd, lvcreate waits for nodes nobody makes: libdevmapper must make them."""
    seen: list[dict[str, str] | None] = []

    def fake_run(argv: object, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seen.append(kwargs.get("env"))
        return subprocess.CompletedProcess([], 0, b"", b"")

    monkeypatch.setattr(lvm.host_run, "run", fake_run)
    monkeypatch.setattr(lvm, "UDEV_CONTROL", tmp_path / "control")
    lvm.run(["lvs"])
    assert seen[-1] == {"LVM_SUPPRESS_FD_WARNINGS": "1", "DM_DISABLE_UDEV": "1"}

    (tmp_path / "control").touch()  # udevd runs: it makes the nodes, as usual
    lvm.run(["lvs"])
    assert seen[-1] == {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def test_a_failing_lvm_command_is_not_blamed_on_a_missing_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real run showed "Failed to wipe start of new LV.: install lvm2 ..." for a
    failing lvcreate: the install hint belongs to a missing program only."""
    monkeypatch.setattr(lvm.host_run, "_check_guard", lambda argv: None)

    def failing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(args, 5, b"", b"  Failed to wipe start of new LV.\n")

    monkeypatch.setattr(lvm.host_run.subprocess, "run", failing)
    with pytest.raises(HostCommandError) as failed:
        lvm.run(["lvcreate", "--yes", "vg"])
    assert failed.value.hint is None
    assert "Failed to wipe start of new LV." in failed.value.one_line()
    assert "install" not in failed.value.one_line()

    def absent(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise FileNotFoundError(args[0])

    monkeypatch.setattr(lvm.host_run.subprocess, "run", absent)
    with pytest.raises(MissingDependency) as missing:
        lvm.run(["pvcreate", "/dev/loop0"])
    assert missing.value.one_line() == (
        "pvcreate is not installed: install lvm2 (and thin-provisioning-tools for thin volumes)"
    )
