"""The launch configuration of a tiny guest for tests that drive QemuDriver directly."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from cloudlet.driver.base import LaunchConfig


def tiny_config(
    shared_state: Path, home: Path, name: str, *, cpus: int = 1, memory_mib: int = 256
) -> LaunchConfig:
    """A tiny VM under ``home`` (short: unix socket paths), on its own overlay disk."""
    from cloudlet.config import Paths
    from cloudlet.images.store import ImageStore
    from cloudlet.storage.qcow2 import create_overlay

    paths = Paths(shared_state)
    image = ImageStore(paths.images, paths.cache / "debs").get("tiny")
    accel = json.loads((shared_state / "host" / "accel.json").read_text())["accel"]
    instance_id = str(uuid.uuid4())
    config = LaunchConfig(
        instance_id=instance_id,
        name=name,
        arch="x86_64",
        accel=accel,
        cpus=cpus,
        memory_mib=memory_mib,
        disk=home / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=home / "run" / instance_id,
        serial_log=home / "serial.log",
        kernel=image.path / "vmlinuz",
        initrd=image.path / "initrd.img",
        cmdline=image.cmdline,
        network_restrict=True,
    )
    create_overlay(image.disk, image.disk_format, config.disk)
    return config
