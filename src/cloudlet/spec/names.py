"""Names of every kind, and the one way a name becomes a path.

Every name crosses from a user (CLI, spec file, export, manifest) and many become file
names, so each kind has one validator: a full-string match (``re.fullmatch``; a ``$``
lets a trailing newline through), a length limit, and a one-line error that names the
kind and the rule without echoing control characters. ``name_path`` is the only way a
name joins a directory: it resolves the result and refuses anything outside the parent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import InvalidInput

# A DNS label, so a VM name can become a hostname; most other kinds share it.
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting with a letter"
_LABEL = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
# How a shown name is cut: a 300-character name makes a one-line error, not a screenful.
_SHOWN = 40


@dataclass(frozen=True)
class NameKind:
    """One kind of name: its pattern (matched in full), its length limit and its rule."""

    what: str
    pattern: re.Pattern[str]
    max_len: int
    rule: str

    def check(self, name: object) -> str:
        """Return ``name`` if it is valid, else raise InvalidInput naming the kind and rule."""
        if (
            not isinstance(name, str)
            or len(name) > self.max_len
            or self.pattern.fullmatch(name) is None
        ):
            raise InvalidInput(f"invalid {self.what} {shown(name)}", hint=f"use {self.rule}")
        return name


def shown(value: object) -> str:
    """A value as an error shows it: repr (no raw control characters), cut short."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    return repr(value)


def _label_kind(what: str) -> NameKind:
    return NameKind(what, re.compile(_LABEL), 63, f"{NAME_RULE}, not ending in '-'")


VM = _label_kind("VM name")
SNAPSHOT = _label_kind("snapshot name")
VOLUME = _label_kind("volume name")
POOL = _label_kind("pool name")
GROUP = _label_kind("firewall group name")
LICENCE = _label_kind("licence name")
# Catalog names keep their projects' version numbers ("ubuntu-24.04"): a DNS label plus
# dots, never a leading dot, so never "." or "..".
IMAGE = NameKind(
    "image name",
    re.compile(r"[a-z](?:[a-z0-9.-]{0,61}[a-z0-9])?"),
    63,
    "1-63 characters: lowercase letters, digits, '-' and '.', starting with a letter "
    "and ending with a letter or digit",
)
# Bridges are "clb-" + the network name and must fit IFNAMSIZ (15 characters).
MAX_NETWORK_NAME = 11
NETWORK = NameKind(
    "network name",
    re.compile(_LABEL),
    63,  # longer ones get their own error, which says why 11
    f"1-{MAX_NETWORK_NAME} characters: lowercase letters, digits and '-', starting with a "
    "letter, not ending in '-'",
)
# Words --network takes that are not virtual networks: QEMU user-mode NAT, or no NIC.
USER_MODE = ("nat", "none")
# Backup ids are made as the start time and 6 hex digits: 20250101T120000-a1b2c3.
BACKUP_ID = NameKind(
    "backup id",
    re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{6}"),
    22,
    "an id as the VM's list of backups shows it, such as 20250101T120000-a1b2c3",
)
# A login user: POSIX-ish, and never something ssh could read as an option.
LOGIN_USER = NameKind(
    "login user",
    re.compile(r"[a-z_][a-z0-9_-]{0,31}"),
    32,
    "1-32 characters: lowercase letters, digits, '_' and '-', starting with a letter or '_'",
)


def validate_name(name: str, *, what: str = "VM name") -> str:
    """The DNS-label rule under any label (``what``); kinds with their own rule have
    their own validator below."""
    return NameKind(what, VM.pattern, VM.max_len, VM.rule).check(name)


# One validator per kind (each returns the name or raises InvalidInput).
vm_name = VM.check
image_name = IMAGE.check
snapshot_name = SNAPSHOT.check
volume_name = VOLUME.check
pool_name = POOL.check
group_name = GROUP.check
licence_name = LICENCE.check
backup_id = BACKUP_ID.check
login_user = LOGIN_USER.check


def model_check(check: Callable[[str], str], value: str) -> str:
    """``check(value)`` inside a pydantic validator: its one line becomes a ValueError."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise ValueError(exc.one_line()) from None


def network_name(name: str) -> str:
    NETWORK.check(name)
    if len(name) > MAX_NETWORK_NAME:
        raise InvalidInput(
            f"network name {name!r} is longer than {MAX_NETWORK_NAME} characters",
            hint="its bridge is named clb-NAME and Linux allows 15 characters",
        )
    if name in USER_MODE:
        raise InvalidInput(
            f"{name!r} is reserved for user-mode networking", hint="pick another network name"
        )
    return name


def name_path(parent: Path, name: str, suffix: str = "", *, links: bool = False) -> Path:
    """``parent / (name + suffix)``, refused unless it resolves to an entry of ``parent``.

    The name should be validated first; this is the last guard, so a name that slipped
    through (or a symlink planted in ``parent``) cannot reach outside it. ``links`` lets
    the entry itself be a symlink placed by whoever owns ``parent`` (built images shared
    from another disk): the name still reaches only that one entry.
    """
    entry = f"{name}{suffix}"
    if not entry or entry in (".", "..") or "/" in entry or "\0" in entry:
        raise InvalidInput(
            f"name {shown(name)} cannot be a file name", hint="use a name without '/' or NUL"
        )
    base = parent.resolve()
    path = (base / entry).resolve() if not links else base / entry
    if path.parent != base:
        raise InvalidInput(
            f"name {shown(name)} leads outside {parent.name or parent}",
            hint="remove the link that points out of it, or use another name",
        )
    return parent / entry
