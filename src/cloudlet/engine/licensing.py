"""Licences: proprietary images count running VMs against seats; some OSes refuse some hosts."""

from __future__ import annotations

from pathlib import Path

from cloudlet.errors import Conflict, InvalidInput
from cloudlet.images.store import Image
from cloudlet.next_steps import Step, step

DMI = Path("/sys/class/dmi/id")


def host_is_apple_hardware(dmi: Path | None = None) -> bool:
    """Apple's macOS licence allows it only on Apple-branded hardware."""
    dmi = DMI if dmi is None else dmi
    for field in ("sys_vendor", "board_vendor", "chassis_vendor"):
        try:
            if "apple" in (dmi / field).read_text().strip().lower():
                return True
        except OSError:
            continue
    return False


def check_host_allowed(image: Image, *, apple_hardware: bool) -> None:
    """Refuse guests whose OS licence forbids this host, saying why."""
    if image.os_family == "macos" and not apple_hardware:
        raise Conflict(
            f"image {image.name} is macOS, which Apple's licence allows only on Apple hardware",
            hint="run it on a Mac host; this host's firmware does not identify as Apple",
        )


def check_seats(image: Image, *, seats: int | None, in_use: int) -> None:
    """One more running VM of ``image`` must fit in its licence's seats."""
    if not image.needs_seats:
        return
    if seats is None:
        raise Conflict(
            f"image {image.name} needs a seat of licence {image.licence!r}; none are registered",
            hint="register seats of that licence",
            next_steps=[step(Step.LICENCE_ADD, licence=image.licence)],
        )
    if in_use + 1 > seats:
        raise Conflict(
            f"licence {image.licence!r} has {seats} seats and {in_use} are in use",
            hint="stop a VM that uses it, or add seats",
            next_steps=[step(Step.LICENCE_ADD, licence=image.licence, seats=str(seats + 1))],
        )


def validate_seats(seats: int) -> int:
    if seats < 0:
        raise InvalidInput(f"invalid seat count {seats}", hint="use 0 or more")
    return seats
