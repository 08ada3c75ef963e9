"""`cloudlet create` flags -> the VM body a spec file holds (the one create request).

The flags are loose answers: sizes in the CLI's own syntax, ``--network`` mixing nat,
none and virtual networks, ``--wait``/``--no-wait``/``--no-start``, files to read. They
are checked with the engine's own words first, then become the same ``VMBody`` a spec
file, the wizard and the API give, with the files read in (see local_files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloudlet.engine.local_files import LocalBody, read_files
from cloudlet.errors import InvalidInput
from cloudlet.spec.create_checks import body_networks, check_answers
from cloudlet.spec.document import VMBody, size_text
from cloudlet.spec.instance import parse_backup
from cloudlet.spec.units import parse_size_with_unit


def body_from_flags(
    name: str, *, image: str = "tiny", type_name: str | None = None, cpus: int | None = None,
    memory: str | None = None, disk_size: str | None = None, networks: tuple[str, ...] = (),
    restrict_network: bool = False, arch: str | None = None, profile: str = "modern",
    user: str | None = None, ssh_keys: tuple[Path, ...] = (), user_data: Path | None = None,
    iso: Path | None = None, wait_cloud_init: bool = False, no_start: bool = False,
    no_wait: bool = False, location: str = "local", containers: bool = False,
    volumes: tuple[str, ...] = (), open_ports: tuple[int, ...] = (), backup: str = "none",
    api_access: bool = False,
) -> LocalBody:  # fmt: skip
    """The body ``cloudlet create NAME`` flags ask for, with key and user-data files read."""
    mem = parse_size_with_unit(memory, what="memory", example_unit="M") if memory else None
    disk = (
        parse_size_with_unit(disk_size, what="disk size", example_unit="G") if disk_size else None
    )
    sizes = [parse_size_with_unit(v, what="volume size", example_unit="G") for v in volumes]
    policy = parse_backup(backup)
    check_answers(
        name, image=image, iso=iso, user=user, type_name=type_name, cpus=cpus, memory=mem,
        profile=profile, arch=arch, ports=open_ports,
    )  # fmt: skip
    network, virtual = body_networks(networks)
    data: dict[str, Any] = {
        "image": image,
        "type": type_name,
        "cpus": cpus,
        "memory": size_text(mem) if mem is not None else None,
        "disk_size": size_text(disk) if disk is not None else None,
        "arch": arch,
        "location": location,
        "profile": profile,
        "network": network,
        "restrict_network": restrict_network,
        "networks": virtual,
        "containers": containers,
        "volumes": [size_text(v) for v in sizes],
        "access": {
            "user": user,
            "ssh_keys": [str(k) for k in ssh_keys],
            "api_access": api_access,
        },
        "firewall": {"inbound_ports": list(open_ports)},
        "backup": policy,
        "user_data_file": str(user_data) if user_data is not None else None,
        "iso": str(iso) if iso is not None else None,
        "state": "stopped" if no_start else "running",
        "wait": "none" if no_wait else "cloud-init" if wait_cloud_init else "agent",
    }
    try:
        body = VMBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the request"
        raise InvalidInput(
            f"invalid {where}: {first['msg'].removeprefix('Value error, ')}",
            hint="see cloudlet create --help",
        ) from None
    return read_files(body)
