"""SSH keys: the user's public key, a generated key pair, and the guest's host keys.

Host keys are read from the serial console (cloud-init prints them there on first
boot) so the first ssh connection can be pinned instead of trusted on first use.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from pathlib import Path

from cloudlet.errors import InvalidInput
from cloudlet.host.run import run, which

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

_PUB_HINT = "pass an OpenSSH public key file such as ~/.ssh/id_ed25519.pub"
_KEY_RE = re.compile(
    r"(?<![\w@.-])(" + "|".join(re.escape(t) for t in KEY_TYPES) + r")\s+([A-Za-z0-9+/]+={0,2})"
)
_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
_END = "-----END SSH HOST KEY KEYS-----"


def parse_public_key(text: str, *, source: str = "key") -> str:
    """One OpenSSH public key line, checked: ``type base64 [comment]``."""
    line = text.strip()
    if "PRIVATE KEY" in line:
        raise InvalidInput(f"{source} is a private key", hint=f"never share it; {_PUB_HINT}")
    if not line or "\n" in line:
        raise InvalidInput(f"{source} must hold exactly one public key line", hint=_PUB_HINT)
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise InvalidInput(f"{source} is not an SSH public key", hint=_PUB_HINT)
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        inner = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise InvalidInput(f"{source} has a damaged key body", hint=_PUB_HINT) from None
    if inner != parts[0]:
        raise InvalidInput(
            f"{source} says {parts[0]} but holds a {inner or 'garbled'} key", hint=_PUB_HINT
        )
    return " ".join(parts)


def load_public_key(path: Path) -> str:
    """The public key in ``path``, or InvalidInput when unreadable or not a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise InvalidInput(f"cannot read SSH public key {path}: {reason}", hint=_PUB_HINT) from None
    return parse_public_key(text, source=str(path))


OWN_KEY_NAME = "id_ed25519"


def find_private_key(public_keys: tuple[str, ...], candidates: list[Path]) -> Path | None:
    """The private half of the first of ``public_keys``, among candidate .pub files.

    A spec file carries keys as text; this finds the key file `cloudlet ssh` should use
    (cloudlet's own pair, or one of the user's ~/.ssh keys), as a --ssh-key path would.
    """
    if not public_keys:
        return None
    wanted = public_keys[0].split()[:2]
    for public in candidates:
        private = public.with_suffix("")
        if not private.exists():
            continue
        try:
            key = parse_public_key(public.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, InvalidInput):
            continue
        if key.split()[:2] == wanted:
            return private
    return None


def ensure_keypair(directory: Path) -> tuple[Path, Path]:
    """(private, public) ed25519 key paths in ``directory``, generated on first use.

    For users without a key of their own: cloudlet keeps one pair and puts its public
    half on every VM that was given no other key.
    """
    private = directory / OWN_KEY_NAME
    public = directory / f"{OWN_KEY_NAME}.pub"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    keygen = which("ssh-keygen", hint="install openssh-client (apt-get install openssh-client)")
    if not private.exists():
        public.unlink(missing_ok=True)
        run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "cloudlet", "-f", private],
            timeout=60,
        )
    os.chmod(private, 0o600)
    if not public.exists():
        derived = run([keygen, "-y", "-f", private], timeout=60).stdout.decode()
        public.write_text(derived.strip() + "\n")
    return private, public


def parse_host_keys(serial_text: str) -> list[str]:
    """``type base64`` of each host key in the last BEGIN/END SSH HOST KEY KEYS block.

    Tolerates what a serial log adds: carriage returns, a logger prefix before each
    line, kernel messages in between. Comments (root@host) are dropped.
    """
    text = serial_text.replace("\r", "")
    start = text.rfind(_BEGIN)
    if start < 0:
        return []
    end = text.find(_END, start)
    if end < 0:
        return []
    block = text[start + len(_BEGIN) : end]
    keys: list[str] = []
    for line in block.split("\n"):
        match = _KEY_RE.search(line)
        if match:
            key = f"{match.group(1)} {match.group(2)}"
            if key not in keys:
                keys.append(key)
    return keys
