"""The catalog of official cloud images and the checksum files that vouch for them.

Each entry names where the image lives and where its project publishes the checksum,
so a download is checked against the project's own list, not against a hash we
pasted here (which would go stale whenever the project refreshes a "latest" image).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.suggest import did_you_mean


@dataclass(frozen=True)
class CatalogEntry:
    """One official image: where to get it, how to check it, what it may be used for."""

    name: str
    title: str
    os: str
    arch: str
    url: str
    checksum_url: str
    checksum_algorithm: str  # "sha256" or "sha512", as hashlib names them
    checksum_filename: str  # the name to look up inside the checksum file
    format: str
    licence: str  # "free", or the kind of terms that restrict it
    licence_name: str
    default_user: str
    os_family: str = "linux"
    cloud_init: bool = True  # every official cloud image runs cloud-init on first boot
    guest_agent: bool = False  # not preinstalled everywhere; cloud-init can add it

    @property
    def filename(self) -> str:
        """The file name the image is published (and cached) under."""
        return self.url.rsplit("/", 1)[-1]


_UBUNTU = "https://cloud-images.ubuntu.com/releases"
_FEDORA = "https://download.fedoraproject.org/pub/fedora/linux/releases/42/Cloud/x86_64/images"
_ALPINE = "https://dl-cdn.alpinelinux.org/alpine/v3.21/releases/cloud"
_DEBIAN = "https://cloud.debian.org/images/cloud/bookworm/latest"

# Ubuntu and Debian publish stable "release"/"latest" paths that follow point updates;
# Fedora and Alpine put the version into every file name, so those entries pin a release.
CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="ubuntu-24.04",
        title="Ubuntu 24.04 LTS (Noble Numbat)",
        os="ubuntu",
        arch="x86_64",
        url=f"{_UBUNTU}/noble/release/ubuntu-24.04-server-cloudimg-amd64.img",
        checksum_url=f"{_UBUNTU}/noble/release/SHA256SUMS",
        checksum_algorithm="sha256",
        checksum_filename="ubuntu-24.04-server-cloudimg-amd64.img",
        format="qcow2",
        licence="free",
        licence_name="Ubuntu: GPL and other free software licences",
        default_user="ubuntu",
    ),
    CatalogEntry(
        name="ubuntu-22.04",
        title="Ubuntu 22.04 LTS (Jammy Jellyfish)",
        os="ubuntu",
        arch="x86_64",
        url=f"{_UBUNTU}/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img",
        checksum_url=f"{_UBUNTU}/jammy/release/SHA256SUMS",
        checksum_algorithm="sha256",
        checksum_filename="ubuntu-22.04-server-cloudimg-amd64.img",
        format="qcow2",
        licence="free",
        licence_name="Ubuntu: GPL and other free software licences",
        default_user="ubuntu",
    ),
    CatalogEntry(
        name="debian-12-genericcloud",
        title="Debian 12 (bookworm) generic cloud",
        os="debian",
        arch="x86_64",
        url=f"{_DEBIAN}/debian-12-genericcloud-amd64.qcow2",
        checksum_url=f"{_DEBIAN}/SHA512SUMS",
        checksum_algorithm="sha512",
        checksum_filename="debian-12-genericcloud-amd64.qcow2",
        format="qcow2",
        licence="free",
        licence_name="Debian Free Software Guidelines (GPL and other free licences)",
        default_user="debian",
    ),
    CatalogEntry(
        name="fedora-42",
        title="Fedora Cloud Base 42 (Generic)",
        os="fedora",
        arch="x86_64",
        url=f"{_FEDORA}/Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2",
        checksum_url=f"{_FEDORA}/Fedora-Cloud-42-1.1-x86_64-CHECKSUM",
        checksum_algorithm="sha256",
        checksum_filename="Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2",
        format="qcow2",
        licence="free",
        licence_name="Fedora: MIT-licensed compilation of free software (GPL and others)",
        default_user="fedora",
    ),
    CatalogEntry(
        name="alpine-3.21",
        title="Alpine Linux 3.21 (NoCloud, BIOS, cloud-init)",
        os="alpine",
        arch="x86_64",
        url=f"{_ALPINE}/nocloud_alpine-3.21.2-x86_64-bios-cloudinit-r0.qcow2",
        checksum_url=f"{_ALPINE}/nocloud_alpine-3.21.2-x86_64-bios-cloudinit-r0.qcow2.sha512",
        checksum_algorithm="sha512",
        checksum_filename="nocloud_alpine-3.21.2-x86_64-bios-cloudinit-r0.qcow2",
        format="qcow2",
        licence="free",
        licence_name="Alpine Linux: GPL-2.0 and other free software licences",
        default_user="alpine",
    ),
)


def names() -> list[str]:
    """The catalog's image names, in catalog order."""
    return [entry.name for entry in CATALOG]


def get_entry(name: str) -> CatalogEntry:
    """The entry called ``name``, or NotFound listing what there is."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise NotFound(
        f"no image {name!r} in the catalog",
        hint=did_you_mean(name, names()) or f"choose one of: {', '.join(names())}",
        next_steps=[step(Step.IMAGE_CATALOG)],
    )


# GNU coreutils: "HASH  name" (text mode) or "HASH *name" (binary mode); some tools
# write a single space.
_GNU = re.compile(r"^\\?(?P<hash>[0-9a-fA-F]+) [ *]?(?P<name>.+)$")
# BSD / "--tag" style, as Fedora uses: "SHA256 (name) = HASH".
_BSD = re.compile(r"^(?P<alg>[A-Za-z0-9-]+) ?\((?P<name>.+)\) ?= ?(?P<hash>[0-9a-fA-F]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def hex_length(algorithm: str) -> int:
    """How many hex digits a digest of ``algorithm`` has; refuses unknown algorithms."""
    algo = algorithm.lower()
    if algo not in hashlib.algorithms_guaranteed or algo.startswith("shake"):
        raise InvalidInput(
            f"unsupported checksum algorithm {algorithm!r}", hint="use sha256 or sha512"
        )
    return hashlib.new(algo).digest_size * 2


def _same_name(listed: str, wanted: str) -> bool:
    listed = listed.strip()
    return listed in (wanted, f"./{wanted}") or listed.rsplit("/", 1)[-1] == wanted


def _norm_alg(name: str) -> str:
    return name.lower().replace("-", "")


def parse_checksum_file(text: str, filename: str, algorithm: str) -> str:
    """The lower-case hex digest listed for ``filename``.

    Reads GNU (``HASH  name`` / ``HASH *name``) and BSD (``SHA256 (name) = HASH``)
    lines and skips anything else, such as the PGP armour around Fedora's CHECKSUM. A
    file holding nothing but one digest (as some per-file ``.sha512`` files do) counts
    for ``filename`` too.
    """
    length = hex_length(algorithm)
    found: set[str] = set()
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    for line in lines:
        bsd = _BSD.match(line)
        if bsd:
            if _norm_alg(bsd["alg"]) == _norm_alg(algorithm) and _same_name(bsd["name"], filename):
                if len(bsd["hash"]) != length:
                    raise InvalidInput(
                        f"the {algorithm} checksum listed for {filename} has the wrong length",
                        hint="the checksum file is damaged; try again later",
                    )
                found.add(bsd["hash"].lower())
            continue
        gnu = _GNU.match(line)
        if gnu and len(gnu["hash"]) == length and _same_name(gnu["name"], filename):
            found.add(gnu["hash"].lower())
    if not found and len(lines) == 1 and _HEX.match(lines[0]) and len(lines[0]) == length:
        found.add(lines[0].lower())
    if not found:
        raise NotFound(
            f"no {algorithm} checksum for {filename} in the checksum file",
            hint="the catalog entry may be out of date; update cloudlet or download the image "
            "by hand and import it",
            next_steps=[step(Step.IMAGE_IMPORT)],
        )
    if len(found) > 1:
        raise InvalidInput(
            f"the checksum file lists different {algorithm} checksums for {filename}",
            hint="the checksum file is inconsistent; try again later",
        )
    return found.pop()
