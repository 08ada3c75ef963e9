"""Wiring: the real engine (QEMU driver, qemu-img disks, built-in images, KVM probe)."""

from __future__ import annotations

import os
from collections.abc import Callable

from cloudlet import logs
from cloudlet.config import Settings
from cloudlet.driver.qemu.confine import Confinement
from cloudlet.driver.qemu.driver import QemuDriver
from cloudlet.engine import accel_cache
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.engine import Engine
from cloudlet.engine.state_modes import tighten
from cloudlet.host import kvm
from cloudlet.host.kvm import AccelVerdict, ProbeGuest
from cloudlet.host.qemu_binaries import available_arches, qemu_version
from cloudlet.host.resources import cpu_count, memory_total
from cloudlet.images.store import Image, ImageStore
from cloudlet.storage.disks import Qcow2Disks
from cloudlet.store.database import Database


def accel_for(settings: Settings, images: ImageStore) -> Callable[[Image], AccelVerdict]:
    """Probe KVM once per host boot (cached), always with the tiny image's kernel."""
    cache_file = accel_cache.cache_file(settings.paths.home)

    def decide(image: Image) -> AccelVerdict:
        probe = image if image.name == "tiny" else images.get("tiny")
        assert probe.kernel is not None and probe.initrd is not None
        return kvm.decide(cache_file, ProbeGuest(probe.kernel, probe.initrd))

    return decide


def open_engine(settings: Settings | None = None, *, recover: bool = True) -> Engine:
    """The engine every frontend uses; finishes interrupted operations on open."""
    settings = settings or Settings.load()
    # Nothing cloudlet writes (database, disks, backups, logs, keys) is for other users.
    os.umask(0o077)
    settings.paths.ensure()
    tighten(settings)
    logs.to_file(settings.paths.home)  # what this engine does, in the private state directory
    images = ImageStore(settings.paths.images, settings.paths.cache / "debs")
    deps = EngineDeps(
        driver=QemuDriver(settings.paths.run, Confinement(settings.paths.home, settings.paths.run)),
        images=images,
        disks=Qcow2Disks(),
        accel=accel_for(settings, images),
        host_cpus=cpu_count(),
        host_memory=memory_total(),
        hypervisor_version=lambda: qemu_version(),
        arches=available_arches,
    )
    engine = Engine(settings, deps, Database(settings.paths.database))
    if recover:
        engine.recover()
    return engine
