"""Package resolution and the .deb cache of the tiny image builder (apt faked)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from cloudlet.errors import NotFound
from cloudlet.images.tiny import debs as debs_mod
from cloudlet.images.tiny.builder import concrete_kernel
from cloudlet.images.tiny.debs import (
    Apt,
    Deb,
    apt_quote,
    debian_sources,
    depends_closure,
    parse_depends_graph,
    parse_stanzas,
)


def test_filename_matches_apt_get_download() -> None:
    deb = Deb("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64", "")
    assert deb.filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    assert Deb("libc6", "2.36-9+deb12u4", "amd64", "").filename == "libc6_2.36-9+deb12u4_amd64.deb"
    assert Deb("tzdata", "2024a-0~deb12u1", "all", "").filename == "tzdata_2024a-0~deb12u1_all.deb"


def test_apt_quote() -> None:
    assert apt_quote("a_b:c%d e", "_:") == "a%5fb%3ac%25d%20e"


def test_parse_stanzas() -> None:
    text = (
        "Package: a\nVersion: 1:2-3\nDescription: x\n more\n\nPackage: b\nVersion: 4\nSHA256: ff\n"
    )
    got = parse_stanzas(text)
    assert got[0]["Version"] == "1:2-3"
    assert got[0]["Description"] == "x\nmore"
    assert got[1] == {"Package": "b", "Version": "4", "SHA256": "ff"}


APT_DEPENDS = """\
linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
qemu-guest-agent
  Depends: libc6
  Depends: libglib2.0-0
busybox-static
linux-image-6.1.0-56-cloud-amd64
  Depends: kmod
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    dracut
    initramfs-tools
    tiny-initramfs
libc6
  Depends: libgcc-s1
libglib2.0-0
  Depends: libc6
  Depends: <perl:any>
    perl
<linux-initramfs-tool>
kmod
libgcc-s1
"""


def test_parse_depends_graph() -> None:
    graph = parse_depends_graph(APT_DEPENDS)
    assert graph["linux-image-6.1.0-56-cloud-amd64"] == [
        ["kmod"],
        ["initramfs-tools", "dracut", "tiny-initramfs"],
    ]
    assert graph["libglib2.0-0"] == [["libc6"], ["perl"]]
    assert graph["busybox-static"] == []
    assert "<linux-initramfs-tool>" not in graph


def test_depends_closure_and_concrete_kernel() -> None:
    graph = parse_depends_graph(APT_DEPENDS)
    assert depends_closure(graph, ["qemu-guest-agent"]) == [
        "qemu-guest-agent",
        "libc6",
        "libglib2.0-0",
        "libgcc-s1",
        "perl",
    ]
    assert concrete_kernel(graph, "linux-image-cloud-amd64") == "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(NotFound):
        concrete_kernel(graph, "busybox-static")


class FakeApt:
    """Stands in for apt-get/apt-cache: serves made-up .debs and counts downloads."""

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self.payloads = payloads
        self.downloads: list[str] = []

    def run(
        self, argv: Sequence[str | os.PathLike[str]], **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        args = [os.fspath(a) for a in argv]
        assert args[0] == "/fake/apt-get" and args[1] == "download"
        cwd = kw["cwd"]
        assert isinstance(cwd, Path)
        for spec in args[2:]:
            if spec.startswith("-"):
                continue
            name = spec.split(":")[0]
            version = spec.split("=", 1)[1]
            self.downloads.append(name)
            deb = Deb(name, version, "amd64", "")
            (cwd / deb.filename).write_bytes(self.payloads[name])
        return subprocess.CompletedProcess(args, 0, b"", b"")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApt:
    fake = FakeApt({"busybox-static": b"bb", "libc6": b"libc"})
    monkeypatch.setattr(debs_mod, "which", lambda name, hint=None: f"/fake/{name}")
    monkeypatch.setattr(debs_mod, "run", fake.run)
    return fake


def _deb(name: str, payload: bytes, version: str = "1:1.0-1") -> Deb:
    return Deb(name, version, "amd64", hashlib.sha256(payload).hexdigest())


def test_fetch_downloads_once_then_uses_cache(fake: FakeApt, tmp_path: Path) -> None:
    apt = Apt("amd64")
    wanted = [_deb("busybox-static", b"bb"), _deb("libc6", b"libc")]
    files = apt.fetch(wanted, tmp_path / "debs")
    assert sorted(fake.downloads) == ["busybox-static", "libc6"]
    assert files["busybox-static"].read_bytes() == b"bb"
    assert files["busybox-static"].name == "busybox-static_1%3a1.0-1_amd64.deb"
    apt.fetch(wanted, tmp_path / "debs")
    assert len(fake.downloads) == 2  # nothing fetched again
    assert [p.name for p in (tmp_path / "debs").iterdir() if p.name.startswith(".")] == []


def test_fetch_replaces_a_corrupt_cached_file(fake: FakeApt, tmp_path: Path) -> None:
    apt = Apt("amd64")
    deb = _deb("libc6", b"libc")
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / deb.filename).write_bytes(b"truncated")
    files = apt.fetch([deb], tmp_path / "debs")
    assert fake.downloads == ["libc6"]
    assert files["libc6"].read_bytes() == b"libc"


def test_new_version_replaces_the_old_one_in_the_cache(fake: FakeApt, tmp_path: Path) -> None:
    apt = Apt("amd64")
    cache = tmp_path / "debs"
    apt.fetch([_deb("libc6", b"libc", version="2.36-1")], cache)
    fake.payloads["libc6"] = b"libc2"
    apt.fetch([_deb("libc6", b"libc2", version="2.36-2")], cache)
    assert sorted(p.name for p in cache.iterdir()) == ["libc6_2.36-2_amd64.deb"]


def test_new_version_keeps_other_architectures(fake: FakeApt, tmp_path: Path) -> None:
    cache = tmp_path / "debs"
    cache.mkdir()
    (cache / "libc6_2.36-1_arm64.deb").write_bytes(b"arm")
    Apt("amd64").fetch([_deb("libc6", b"libc", version="2.36-2")], cache)
    assert sorted(p.name for p in cache.iterdir()) == [
        "libc6_2.36-1_arm64.deb",
        "libc6_2.36-2_amd64.deb",
    ]


def test_debian_sources_from_indextargets(tmp_path: Path) -> None:
    targets = "\n".join(
        [
            "deb\tDebian\thttp://deb.debian.org/debian/\tbookworm\tmain",
            "deb\tDebian\thttp://deb.debian.org/debian/\tbookworm\tcontrib",
            "deb\tDebian\thttp://deb.debian.org/debian/\tbookworm\tmain",
            "deb\tDebian\thttp://deb.debian.org/debian-security/\tbookworm-security\tmain",
            "deb-src\tDebian\thttp://deb.debian.org/debian/\tbookworm\tmain",
            "deb\tNodeSource\thttps://deb.nodesource.com/node_20.x/\tnodistro\tmain",
            "garbage",
        ]
    )
    assert debian_sources(targets, keyring=None) == (
        "deb http://deb.debian.org/debian/ bookworm main contrib\n"
        "deb http://deb.debian.org/debian-security/ bookworm-security main\n"
    )
    keyring = tmp_path / "k.gpg"
    keyring.write_bytes(b"")
    assert debian_sources(targets, keyring=keyring).startswith(f"deb [signed-by={keyring}] ")


def test_private_apt_state_never_touches_the_hosts(fake: FakeApt, tmp_path: Path) -> None:
    apt = Apt("arm64", state_dir=tmp_path / "apt-arm64")
    opts = dict(o.split("=", 1) for o in apt.options if o != "-o")
    assert opts["APT::Architecture"] == "arm64"
    assert opts["APT::Architectures::"] == "arm64"
    assert opts["Dir::State::Status"] == "/dev/null"
    for key in ("Dir::State::Lists", "Dir::Cache", "Dir::Etc::SourceList", "Dir::Etc::SourceParts"):
        assert opts[key].startswith(str(tmp_path / "apt-arm64")), key
    assert Apt("amd64").options == []
