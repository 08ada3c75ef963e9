"""The answers of a new VM that need nothing but themselves to check.

The engine checks them before it creates anything; a frontend that builds a VM body
from loose answers (the CLI's flags) checks them first too, so a wrong answer gets the
engine's own words rather than a model's validation message. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from cloudlet.errors import InvalidInput
from cloudlet.spec import names
from cloudlet.spec.instance import Arch, Profile
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.network import split_networks


def check_answers(
    name: str, *, image: str, iso: object, user: str | None, type_name: str | None,
    cpus: int | None, memory: int | None, profile: str, arch: str | None,
    ports: Sequence[int] = (),
) -> None:  # fmt: skip
    """Name, image name, login user, machine shape, profile, architecture and inbound
    ports, in that order."""
    names.vm_name(name)
    if iso is None:
        names.image_name(image)
    if user is not None:
        names.login_user(user)
    resolve_shape(type_name, cpus, memory)
    if profile not in get_args(Profile):
        raise InvalidInput(f"unknown profile {profile!r}", hint="use modern or legacy")
    if arch is not None and arch not in get_args(Arch):
        raise InvalidInput(
            f"unknown architecture {arch!r}", hint=f"use one of {', '.join(get_args(Arch))}"
        )
    for port in ports:
        if not 1 <= port <= 65535:
            raise InvalidInput(f"invalid port {port}", hint="open ports from 1 to 65535")


def body_networks(values: Sequence[str]) -> tuple[str, list[str]]:
    """Network names as given (nat, none and virtual networks mixed) -> the body's
    ``network`` (nat or none) and ``networks`` (virtual networks, one NIC each)."""
    mode, nics = split_networks(tuple(values))
    return mode, [nic.network for nic in nics]
