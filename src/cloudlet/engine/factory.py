"""Wiring: the real engine (QEMU driver, qemu-img disks, built-in images, KVM probe)."""

from __future__ import annotations

from collections.abc import Callable

from cloudlet.config import Settings
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.engine import Engine
from cloudlet.host import kvm
from cloudlet.host.kvm import AccelVerdict, ProbeGuest
from cloudlet.host.qemu_binaries import qemu_version
from cloudlet.host.resources import cpu_count, memory_total
from cloudlet.images.store import Image, ImageStore
from cloudlet.storage.disks import Qcow2Disks
from cloudlet.store.database import Database


def accel_for(settings: Settings) -> Callable[[Image], AccelVerdict]:
    """Probe KVM once per host boot (cached in the state directory)."""
    cache_file = settings.paths.home / "host" / "accel.json"

    def decide(image: Image) -> AccelVerdict:
        if image.kernel is None or image.initrd is None:
            raise ValueError("the KVM probe needs an image with a kernel and an initramfs")
        return kvm.decide(cache_file, ProbeGuest(image.kernel, image.initrd))

    return decide


def open_engine(settings: Settings | None = None, *, recover: bool = True) -> Engine:
    """The engine every frontend uses; finishes interrupted operations on open."""
    settings = settings or Settings.load()
    settings.paths.ensure()
    deps = EngineDeps(
        driver=QemuDriver(settings.paths.run),
        images=ImageStore(settings.paths.images, settings.paths.cache / "debs"),
        disks=Qcow2Disks(),
        accel=accel_for(settings),
        host_cpus=cpu_count(),
        host_memory=memory_total(),
        hypervisor_version=lambda: qemu_version(),
    )
    engine = Engine(settings, deps, Database(settings.paths.database))
    if recover:
        engine.recover()
    return engine
