"""A VM's record read from a file we did not write (an export, a backup manifest).

It goes through the same checks as a create from the CLI: the same spec model, the same
shape resolution (catalog type or custom cpus/memory in range), the allow-lists for
arch, profile and location, and the same key and user-data checks. Host paths are never
taken from it: the image (and with it the kernel, initrd and command line QEMU boots)
is looked up by name on this host, the SSH private key is one this host has, and the
seed and SSH forward follow the image and the spec, not the file.

What the old row carried, field by field: ``image``, ``arch``, ``location``,
``type_name``, ``cpus`` and ``memory`` must be the spec's, and the shape is resolved as
``--type/--cpus/--memory`` are; ``image_path``, ``disk_size``, ``ssh`` and ``seed`` are
not used (the image's path on this host, the disk's real size, the spec, the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cloudlet.engine import access as access_mod
from cloudlet.engine import launch
from cloudlet.engine.context import EngineContext
from cloudlet.errors import InvalidInput
from cloudlet.images.store import Image
from cloudlet.spec.instance import LOCAL_ZONE, InstanceSpec
from cloudlet.spec.machine_types import MachineType, resolve_shape
from cloudlet.spec.names import image_name as checked_image_name
from cloudlet.spec.names import validate_name

ROW_FIELDS = frozenset({"image", "image_path", "type_name", "cpus", "memory", "disk_size",
                        "arch", "location", "ssh", "seed"})  # fmt: skip
SAME_AS_SPEC = (("image", "image"), ("arch", "arch"), ("location", "location"),
                ("type_name", "type"), ("cpus", "cpus"), ("memory", "memory"))  # fmt: skip
MAX_DISK = 1 << 50


@dataclass(frozen=True)
class VmRecord:
    """A checked record: what a new VM made from it gets."""

    spec: InstanceSpec
    image: Image
    shape: MachineType
    ssh: bool
    seed: bool


def _bad(source: str, why: str, hint: str = "") -> InvalidInput:
    return InvalidInput(
        f"{source}: {why}",
        hint=hint or "nothing was created; the file was not written by cloudlet, or was changed",
    )


def _spec(source: str, name: str, data: dict[str, Any]) -> InstanceSpec:
    try:
        return InstanceSpec.model_validate({**data, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        parts = (p if isinstance(p, str) and p.isprintable() else repr(p) for p in first["loc"])
        where = ".".join(parts)[:80] or "spec"  # a field name from the file: one line
        raise _bad(source, f"its spec is not valid ({where}: {first['msg']})") from None


def _int(row: dict[str, Any], key: str, source: str) -> int:
    value = row.get(key)
    if type(value) is not int:
        raise _bad(source, f"its {key} is {str(value)[:40]!r}, not a whole number")
    return value


def check_record(
    ctx: EngineContext, name: str, spec_data: object, row_data: object, source: str
) -> VmRecord:
    """``spec_data`` and ``row_data`` from ``source`` as a new VM ``name`` would get them;
    InvalidInput (or NotFound for an image this host lacks) in one line, before anything
    is made."""
    validate_name(name)
    if not isinstance(spec_data, dict) or not isinstance(row_data, dict):
        raise _bad(source, "its spec or VM record is not an object")
    unknown = set(row_data) - ROW_FIELDS
    if unknown:
        raise _bad(source, f"its VM record has unknown fields {sorted(unknown)[:5]}")
    spec = _spec(source, name, spec_data)
    for key, field in SAME_AS_SPEC:
        if key in row_data and row_data[key] != getattr(spec, field):
            raise _bad(source, f"its VM record's {key} is not its spec's")
    if spec.location != LOCAL_ZONE:
        raise _bad(
            source,
            f"unknown location {spec.location[:40]!r}",
            f"this host's zone is {LOCAL_ZONE!r} (the only one for now)",
        )
    type_name = row_data.get("type_name", spec.type)
    if not isinstance(type_name, str):
        raise _bad(source, "its machine type is not a name")
    shape = resolve_shape(
        type_name, _int(row_data, "cpus", source), _int(row_data, "memory", source)
    )
    for size in (spec.disk_size, *spec.volumes):
        if size is not None and not 0 < size <= MAX_DISK:
            raise _bad(source, f"a disk size of {size} bytes is out of range")
    for network in {n.network for n in spec.network.nics} | {p.network for p in spec.network.ports}:
        if network != "nat":
            validate_name(network, what="network name")
    user = spec.access.user  # a login name: the spec model checked it
    image_name = spec.install_iso or spec.image
    image = ctx.deps.images.get(checked_image_name(image_name), arch=spec.arch)
    launch.check_arch(ctx, image.arch, spec.profile)
    if spec.containers and not image.cloud_init:
        raise _bad(source, f"image {image.name} has no cloud-init for its container runtime")
    plan = access_mod.plan_access(
        image,
        user=user if image.cloud_init else None,
        keys_dir=ctx.paths.home / "keys",
        ssh_key_lines=spec.access.ssh_public_keys,
        user_data_text=spec.user_data,
    )
    if user is not None and not image.cloud_init:
        raise _bad(source, f"image {image.name} has no cloud-init, so it has no login {user}")
    spec = spec.model_copy(
        update={
            "access": plan.access,
            "user_data": plan.user_data,
            "type": shape.name,
            "cpus": shape.cpus,
            "memory": shape.memory,
        }
    )
    ssh = spec.network.mode == "nat" and spec.network.ssh_forward
    return VmRecord(spec, image, shape, ssh, image.cloud_init)
