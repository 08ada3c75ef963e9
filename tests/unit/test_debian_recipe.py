"""The debian-12 recipe and the pure parts of its builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.errors import InvalidInput
from cloudlet.images.debian import builder, recipe


def test_digest_is_stable_and_tracks_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    first = recipe.recipe_digest()
    assert first == recipe.recipe_digest("bookworm")
    monkeypatch.setattr(recipe, "CMDLINE", recipe.CMDLINE + " debug")
    assert recipe.recipe_digest() != first


def test_unknown_release() -> None:
    with pytest.raises(InvalidInput, match="trixie"):
        recipe.recipe_digest("trixie")


def test_cloud_init_uses_nocloud_only() -> None:
    _mode, text = recipe.FILES["etc/cloud/cloud.cfg.d/99-cloudlet.cfg"]
    assert "datasource_list: [NoCloud, None]" in text


def test_mmdebstrap_argv_with_cache(tmp_path: Path) -> None:
    info = recipe.release_info("bookworm")
    argv = builder.mmdebstrap_argv("mmdebstrap", info, tmp_path / "root", tmp_path / "apt")
    assert "--variant=minbase" in argv
    include = next(a for a in argv if a.startswith("--include="))
    for pkg in ("linux-image-cloud-amd64", "openssh-server", "cloud-init", "qemu-guest-agent"):
        assert pkg in include.split("=", 1)[1].split(",")
    assert f"--setup-hook=sync-in {tmp_path / 'apt'} /var/cache/apt/archives/" in argv
    assert argv.index("bookworm") == len(argv) - 1 - len(recipe.MIRRORS) - 1
    assert argv[-3] == "deb http://deb.debian.org/debian bookworm main"


def test_mmdebstrap_argv_without_cache(tmp_path: Path) -> None:
    info = recipe.release_info("bookworm")
    argv = builder.mmdebstrap_argv("mmdebstrap", info, tmp_path / "root", None)
    assert not any("sync-" in a for a in argv)


def test_manifest_keys() -> None:
    info = recipe.release_info("bookworm")
    got = builder.image_manifest(info, digest="d" * 64, packages={"cloud-init": "22.4"})
    assert got["name"] == "debian-12"
    assert got["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert got["default_user"] == "debian"
    assert got["cloud_init"] is True and got["guest_agent"] is True
    assert got["licence"] == "free"
    assert str(got["cmdline"]).startswith("console=ttyS0 root=/dev/vda")
    assert got["min_disk_bytes"] == 2 * 1024**3


def test_installed_versions(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: a\nStatus: install ok installed\nVersion: 1.0\nDescription: x\n y\n\n"
        "Package: b\nStatus: deinstall ok config-files\nVersion: 2\n"
    )
    assert builder.installed_versions(tmp_path) == {"a": "1.0"}
