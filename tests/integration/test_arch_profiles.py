"""Foreign-architecture and legacy-profile guests, booted for real under TCG.

The aarch64 tiny image runs under qemu-system-aarch64 on the virt machine; the x86_64
tiny image runs on the legacy profile (i440fx, IDE disk). Both go through
``QemuDriver`` with the argv of ``build_argv``, as the engine would start them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.driver.base import LaunchConfig
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.host.qemu_binaries import available_arches
from cloudlet.images.tiny import build_tiny, recipe_digest
from cloudlet.storage.qcow2 import create_overlay

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test"))
AGENT_TIMEOUT = 300.0


def tiny_image(arch: str) -> Path:
    """The tiny image for ``arch``, built once per recipe digest and kept in the cache."""
    dest = CACHE / "tiny-images" / arch / recipe_digest(arch)[:16]
    if not (dest / "image.json").is_file():
        build_tiny(dest, arch=arch, deb_cache=CACHE / "debs")
    return dest


@dataclass
class Booted:
    driver: QemuDriver
    config: LaunchConfig
    seconds_to_agent: float

    def sh(self, script: str) -> str:
        result = self.driver.exec(self.config.instance_id, ["sh", "-c", script], timeout=60)
        assert result.exit_code == 0, result
        return result.stdout.decode()


def _boot(arch: str, profile: str, home: Path) -> Iterator[Booted]:
    image = tiny_image(arch)
    meta = json.loads((image / "image.json").read_text())
    iid = str(uuid.uuid4())
    config = LaunchConfig(
        instance_id=iid,
        name=f"{arch}-{profile}",
        arch=arch,
        accel="tcg",
        cpus=2,
        memory_mib=512,
        disk=home / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=home / "run" / iid,
        serial_log=home / "serial.log",
        kernel=image / meta["kernel"],
        initrd=image / meta["initrd"],
        cmdline=f"{meta['cmdline']} cloudlet.hostname={arch}-{profile}",
        profile=profile,
        network_restrict=True,
    )
    create_overlay(image / meta["disk"], meta["format"], config.disk)
    driver = QemuDriver(home / "run")
    try:
        started = time.monotonic()
        driver.start(config)
        try:
            driver.wait_agent(iid, AGENT_TIMEOUT)
        except Exception:
            log = (
                config.serial_log.read_text(errors="replace") if config.serial_log.exists() else ""
            )
            pytest.fail(f"agent never answered; serial console:\n{log}")
        elapsed = time.monotonic() - started
        print(f"\n{arch}/{profile}: boot to agent {elapsed:.1f} s")
        yield Booted(driver, config, elapsed)
    finally:
        driver.force_stop(iid)
        driver.cleanup(iid)


@pytest.fixture
def aarch64_vm(short_tmp: Path) -> Iterator[Booted]:
    # scripts/setup.sh installs qemu-system-arm: a missing emulator is a setup failure.
    assert "aarch64" in available_arches(), (
        "qemu-system-aarch64 missing: apt-get install qemu-system-arm"
    )
    yield from _boot("aarch64", "modern", short_tmp)


@pytest.fixture
def legacy_vm(short_tmp: Path) -> Iterator[Booted]:
    yield from _boot("x86_64", "legacy", short_tmp)


def test_aarch64_image_manifest() -> None:
    meta = json.loads((tiny_image("aarch64") / "image.json").read_text())
    assert meta["arch"] == "aarch64"
    assert meta["recipe"] == recipe_digest("aarch64") != recipe_digest("x86_64")
    assert "console=ttyAMA0" in meta["cmdline"]
    assert any(p.startswith("linux-image-") and p.endswith("-arm64") for p in meta["packages"])


def test_aarch64_guest_runs_arm_code(aarch64_vm: Booted) -> None:
    assert aarch64_vm.sh("uname -m").strip() == "aarch64"
    assert aarch64_vm.sh("nproc").strip() == "2"
    # The root file system came from the virtio disk, found by its label.
    assert "/dev/vda / ext4" in aarch64_vm.sh("cat /proc/mounts")


def test_legacy_profile_boots_from_an_ide_disk(legacy_vm: Booted) -> None:
    assert "/dev/sda / ext4" in legacy_vm.sh("cat /proc/mounts")
    path = legacy_vm.sh("readlink -f /sys/block/sda")
    assert "/ata" in path, path  # .../0000:00:01.1/ata1/host0/... on the PIIX controller
    assert legacy_vm.sh("cat /sys/block/sda/device/vendor").strip() == "ATA"
    assert legacy_vm.sh("cat /sys/bus/pci/devices/0000:00:01.1/class").startswith("0x0101")
    assert not legacy_vm.sh("ls /sys/block").count("vd")


@pytest.mark.parametrize("fixture", ["aarch64_vm", "legacy_vm"])
def test_volume_hotplug_on_virt_and_i440fx(fixture: str, request: pytest.FixtureRequest) -> None:
    """aarch64 virt hot-plugs on its spare PCIe root ports, i440fx on its PCI bus."""
    from cloudlet.driver.base import ExtraDisk
    from cloudlet.storage.qcow2 import create_blank

    vm: Booted = request.getfixturevalue(fixture)
    disk = ExtraDisk("vhotplug0001", vm.config.disk.parent / "vol.qcow2", serial="data1", slot=2)
    create_blank(disk.path, 32 << 20)
    vm.driver.attach_disk(vm.config.instance_id, disk)
    listing = "for d in /sys/block/*; do echo $(cat $d/serial 2>/dev/null) $(cat $d/size); done"
    expected = f"data1 {(32 << 20) // 512}"
    deadline = time.monotonic() + 60
    while expected not in (sizes := vm.sh(listing)).splitlines():
        assert time.monotonic() < deadline, f"the guest never saw the disk: {sizes}"
        time.sleep(0.5)
    vm.driver.detach_disk(vm.config.instance_id, disk, timeout=60)
    assert vm.driver.attached_disks(vm.config.instance_id) == []
