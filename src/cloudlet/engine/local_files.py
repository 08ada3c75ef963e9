"""Host files a local frontend names for a new VM, read into the VM body.

A VM body (the create request) carries data, not host paths: SSH keys as key lines and
user-data as text, so the same body can come over the API. The CLI's flags and spec
files name files on this host; this reads them, with the errors a user can act on, and
keeps the key files' paths so the engine can record the matching private key.
``iso`` stays a host path: only a local frontend may give it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.spec.document import AccessDoc, VMBody

Locate = Callable[[str, CloudletError], CloudletError]


@dataclass(frozen=True)
class LocalBody:
    """A body with every file read, and where its public keys came from."""

    body: VMBody
    key_files: tuple[Path, ...] = ()


def is_key_line(text: str) -> bool:
    """A public key written out ('ssh-ed25519 AAAA...'), not the path of a .pub file."""
    from cloudlet.cloudinit.keys import KEY_TYPES

    parts = text.split()
    return len(parts) >= 2 and parts[0] in KEY_TYPES


def read_user_data(path: Path) -> str:
    """The text of a user-data file; InvalidInput when it cannot be read."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read user-data {path}: {exc}", hint="check the path") from None


def _as_is(error_field: str, exc: CloudletError) -> CloudletError:
    return exc


def read_files(
    body: VMBody, resolve: Callable[[str], Path] = Path, locate: Locate = _as_is
) -> LocalBody:
    """``body`` with its key paths and user-data file read in as text.

    ``resolve`` turns a path as written into a host path (a spec file's are relative
    to the file); ``locate`` turns an error into one naming the field.
    """
    from cloudlet import cloudinit

    lines: list[str] = []
    files: list[Path] = []
    for i, key in enumerate(body.access.ssh_keys):
        if is_key_line(key):
            lines.append(key)
            continue
        path = resolve(key).expanduser()
        try:
            lines.append(cloudinit.load_public_key(path))
        except CloudletError as exc:
            raise locate(f"spec.access.ssh_keys.{i}", exc) from None
        files.append(Path(os.path.abspath(path)))  # its private half is recorded: no cwd in it
    user_data = body.user_data
    if body.user_data_file is not None:
        try:
            user_data = read_user_data(resolve(body.user_data_file))
        except CloudletError as exc:
            raise locate("spec.user_data_file", exc) from None
    access = AccessDoc(user=body.access.user, ssh_keys=lines, api_access=body.access.api_access)
    update = {"access": access, "user_data": user_data, "user_data_file": None}
    return LocalBody(body.model_copy(update=update), tuple(files))
