"""Fake collaborators for engine unit tests: images, disks, accelerator."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cloudlet.config import Paths, Settings
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.context import EngineContext
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.engine import Engine
from cloudlet.engine.local_files import read_files
from cloudlet.engine.views import InstanceView
from cloudlet.errors import InvalidInput, NotFound
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.importer import check_size
from cloudlet.images.store import Image, Progress
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB, MIB
from cloudlet.store.database import Database
from cloudlet.store.models import InstanceRow, OperationRow


class FakeImages:
    """Images of 256 MiB as files in a directory: free 'tiny', proprietary 'acme', 'mac'."""

    EXTRA: ClassVar[dict[str, dict[str, object]]] = {
        "tiny": {},
        "acme": {"licence": "acme-os"},
        "mac": {"os_family": "macos", "licence": "apple-eula"},
        "cloudy": {"cloud_init": True, "default_user": "debian"},
    }

    def __init__(self, root: Path) -> None:
        self.root = root
        for name, extra in self.EXTRA.items():
            path = root / name / "v1"
            path.mkdir(parents=True, exist_ok=True)
            (path / "disk.qcow2").write_bytes(b"fake")
            meta = {
                "name": name,
                "disk": "disk.qcow2",
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "cmdline": "console=ttyS0",
                "min_disk_bytes": 256 * MIB,
                "guest_agent": True,
                **extra,
            }
            (path / "image.json").write_text(json.dumps(meta))

    def get(
        self,
        name: str,
        *,
        progress: Progress | None = None,
        build: bool = True,
        arch: str | None = None,
    ) -> Image:
        if name not in self.EXTRA:
            raise NotFound(f"unknown image {name!r}", hint="available: tiny, acme, mac, cloudy")
        return Image.load(self.root / name / "v1")

    def names(self) -> list[str]:
        return sorted(self.EXTRA)

    def images(self) -> list[Image]:
        return [self.get(name) for name in self.names()]

    def delete(self, name: str) -> list[Path]:
        self.EXTRA = {k: v for k, v in self.EXTRA.items() if k != name}
        return [self.root / name / "v1"]


class FakeDisks:
    """An overlay is a JSON file holding its virtual size."""

    def create_overlay(self, image: Image, dest: Path, size: int | None) -> None:
        dest.write_text(json.dumps({"size": size or image.min_disk_bytes}))

    def create_blank(self, dest: Path, size: int) -> None:
        dest.write_text(json.dumps({"size": size}))

    def virtual_size(self, path: Path) -> int:
        return int(json.loads(path.read_text())["size"])

    # A layer records its backing and the "data" written to it (a dict of name -> text),
    # so tests can follow what snapshots, merges and clones do to a disk's content.
    def create_layer(self, backing: Path, backing_format: str, dest: Path) -> None:
        if dest.exists():
            raise AssertionError(f"{dest} would be overwritten")
        size = self.virtual_size(backing) if backing.exists() else 0
        dest.write_text(json.dumps({"size": size, "backing": str(backing), "data": {}}))

    def resize(self, path: Path, size: int) -> None:
        data = json.loads(path.read_text())
        data["size"] = size
        path.write_text(json.dumps(data))

    def rebase(self, path: Path, backing: Path | None, backing_format: str) -> None:
        data = json.loads(path.read_text())
        merged = self.content(path)
        below = self.content(backing) if backing is not None else {}
        data["data"] = {k: v for k, v in merged.items() if below.get(k) != v}
        data["backing"] = str(backing) if backing is not None else None
        path.write_text(json.dumps(data))

    def flatten(self, src: Path, dest: Path, src_format: str = "qcow2") -> None:
        size = self.virtual_size(src)
        dest.write_text(json.dumps({"size": size, "data": self.content(src)}))

    def check(self, path: Path) -> dict[str, object]:
        json.loads(path.read_text())
        return {"corruptions": 0, "leaks": 0, "check-errors": 0}

    def backing(self, path: Path) -> tuple[Path, str] | None:
        name = json.loads(path.read_text()).get("backing")
        return (Path(name), "qcow2") if name else None

    # Backups: a fake disk's "data" keys that are numbers are byte offsets, their values
    # the text written there; that is what backups read and restores write back.
    def extents(self, path: Path, piece: int) -> Iterator[tuple[int, bytes | None, int]]:
        data = json.loads(path.read_text()).get("data", {})
        for key in sorted((k for k in data if k.isdigit()), key=int):
            offset, raw = int(key), data[key].encode()
            while raw:
                cut = min(len(raw), (offset // piece + 1) * piece - offset)
                yield offset, raw[:cut], cut
                offset, raw = offset + cut, raw[cut:]

    def from_raw(self, raw: Path, dest: Path) -> None:
        data: dict[str, str] = {}
        block, offset, zeros = 1 << 22, 0, bytes(1 << 22)
        with open(raw, "rb") as f:
            while piece := f.read(block):
                if piece != zeros[: len(piece)]:
                    for match in re.finditer(rb"[^\x00]+", piece):
                        data[str(offset + match.start())] = match.group().decode()
                offset += len(piece)
        dest.write_text(json.dumps({"size": offset, "data": data}))

    def inspect_import(
        self, path: Path, max_size: int | None = None, label: str | None = None
    ) -> int:
        data = json.loads(path.read_text())
        if data.get("backing"):
            raise InvalidInput(f"backing-filename is {data['backing']!r}: refused")
        check_size(label or path.name, int(data["size"]), max_size)
        return int(data["size"])

    @staticmethod
    def content(path: Path) -> dict[str, str]:
        """What the guest would read through the chain ending in ``path``."""
        if not path.exists():
            return {}  # the base image: empty
        data = json.loads(path.read_text())
        below = FakeDisks.content(Path(data["backing"])) if data.get("backing") else {}
        return {**below, **data.get("data", {})}

    @staticmethod
    def write(path: Path, key: str, value: str) -> None:
        """The guest writes to the top layer ``path``."""
        data = json.loads(path.read_text())
        data.setdefault("data", {})[key] = value
        path.write_text(json.dumps(data))


def make_fake_context(home: Path, *, cpus: int = 4, memory: int = 8 * GIB) -> EngineContext:
    """The shared engine context on the fake driver, images and disks (no facade)."""
    settings = Settings(paths=Paths(home), stop_timeout=0.2)
    settings.paths.ensure()
    deps = EngineDeps(
        driver=FakeDriver(),
        images=FakeImages(home / "images"),
        disks=FakeDisks(),
        accel=lambda image: AccelVerdict("tcg", "fake host"),
        host_cpus=cpus,
        host_memory=memory,
        hypervisor_version=lambda: "fake",
        arches=lambda: {"x86_64": "fake-qemu"},
    )
    return EngineContext(settings, deps, Database(settings.paths.database))


def make_fake_engine(home: Path, *, cpus: int = 4, memory: int = 8 * GIB) -> Engine:
    ctx = make_fake_context(home, cpus=cpus, memory=memory)
    return Engine(ctx.settings, ctx.deps, ctx.db)


def _facade_used(name: str) -> Callable[..., Any]:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"a service used the Engine facade ({name})")

    return refuse


def switch_off_the_facade(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every method and property of the Engine class fails the test from now on: a
    service built from an EngineContext that still reaches into the facade is caught."""
    for attr, value in list(vars(Engine).items()):
        if attr.startswith("__") and attr != "__init__":
            continue
        if isinstance(value, property):
            monkeypatch.setattr(Engine, attr, property(_facade_used(attr)))
        elif callable(value) or isinstance(value, staticmethod | classmethod):
            monkeypatch.setattr(Engine, attr, _facade_used(attr))


def make_vm_with_volume(home: Path) -> Engine:
    """A fake engine with VM web1 (running) and volume data1 (64 MiB) attached to it."""
    e = make_fake_engine(home)
    e.create("web1", VMBody())
    e.storage.volume_create("data1", 64 * MIB)
    e.storage.volume_attach("data1", "web1")
    return e


def add_interrupted_create(db: Database, instance_id: str, name: str) -> None:
    """A create that died half way: row and operation recorded, its process gone."""
    with db.session() as s:
        s.add(
            InstanceRow(
                id=instance_id, name=name, state="creating", spec_json="{}", image="tiny",
                image_path="/x", type_name="gp.small", cpus=1, memory=GIB, disk_size=GIB,
                arch="x86_64", location="local",
            )
        )  # fmt: skip
        s.add(
            OperationRow(
                instance_id=instance_id, instance_name=name, kind="create", status="running",
                pid=2**22 + 1,
            )
        )  # fmt: skip


def create_local(engine: Engine, name: str, body: VMBody) -> InstanceView:
    """``engine.create`` as a local frontend calls it: key and user-data files read first."""
    local = read_files(body)
    return engine.create(name, local.body, key_files=local.key_files)
