"""The image catalog and the checksum-file parser (no network)."""

from __future__ import annotations

import pytest

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.images.catalog import CATALOG, get_entry, names, parse_checksum_file
from cloudlet.spec.names import IMAGE

H256 = "a" * 64
H512 = "b" * 128


def test_catalog_has_the_promised_images() -> None:
    assert names() == [
        "ubuntu-24.04",
        "ubuntu-22.04",
        "debian-12-genericcloud",
        "fedora-42",
        "alpine-3.21",
    ]
    users = {e.name: e.default_user for e in CATALOG}
    assert users == {
        "ubuntu-24.04": "ubuntu",
        "ubuntu-22.04": "ubuntu",
        "debian-12-genericcloud": "debian",
        "fedora-42": "fedora",
        "alpine-3.21": "alpine",
    }


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_entries_are_complete(entry: object) -> None:
    from cloudlet.images.catalog import CatalogEntry

    assert isinstance(entry, CatalogEntry)
    assert entry.url.startswith("https://")
    assert entry.checksum_url.startswith("https://")
    assert entry.arch == "x86_64"
    assert entry.format == "qcow2"
    assert entry.checksum_algorithm in ("sha256", "sha512")
    assert entry.checksum_filename == entry.filename == entry.url.rsplit("/", 1)[-1]
    assert entry.licence == "free" and entry.licence_name
    assert entry.title


def test_checksum_files_match_the_projects_conventions() -> None:
    assert get_entry("ubuntu-24.04").checksum_url.endswith("/noble/release/SHA256SUMS")
    assert get_entry("ubuntu-22.04").checksum_url.endswith("/jammy/release/SHA256SUMS")
    debian = get_entry("debian-12-genericcloud")
    assert debian.checksum_url.endswith("/bookworm/latest/SHA512SUMS")
    assert debian.checksum_algorithm == "sha512"
    assert get_entry("fedora-42").checksum_url.endswith("-CHECKSUM")
    assert get_entry("alpine-3.21").checksum_url.endswith(".qcow2.sha512")


def test_catalog_names_can_name_images() -> None:
    for entry in CATALOG:
        assert IMAGE.check(entry.name) == entry.name  # catalog names become image names
        assert entry.cloud_init and entry.os_family == "linux"


def test_catalog_names_do_not_shadow_built_in_images() -> None:
    from cloudlet.images.store import BUILTIN

    assert not set(names()) & set(BUILTIN)


def test_unknown_entry_lists_the_names() -> None:
    with pytest.raises(NotFound) as err:
        get_entry("windows-11")
    assert "windows-11" in err.value.message
    assert err.value.hint is not None and "fedora-42" in err.value.hint


def test_gnu_format_text_and_binary_mode() -> None:
    text = f"{'c' * 64}  other.img\n{H256} *disk.img\n{'d' * 64}  disk.img.manifest\n"
    assert parse_checksum_file(text, "disk.img", "sha256") == H256
    assert parse_checksum_file(f"{H256}  disk.img\n", "disk.img", "sha256") == H256
    assert parse_checksum_file(f"{H256}  ./disk.img\n", "disk.img", "sha256") == H256


def test_gnu_format_uppercase_is_normalised() -> None:
    assert parse_checksum_file(f"{H256.upper()}  disk.img", "disk.img", "SHA256") == H256


def test_sha512_list_ignores_lines_of_the_wrong_length() -> None:
    text = f"{H256}  disk.qcow2\n{H512}  disk.qcow2\n"
    assert parse_checksum_file(text, "disk.qcow2", "sha512") == H512


def test_bsd_format_inside_pgp_armour() -> None:
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        "# Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2: 123 bytes\n"
        f"SHA256 (Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2) = {H256}\n"
        f"SHA512 (Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2) = {H512}\n"
        "-----BEGIN PGP SIGNATURE-----\n\nwsFzBAEBCAAdFiEE\n-----END PGP SIGNATURE-----\n"
    )
    name = "Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2"
    assert parse_checksum_file(text, name, "sha256") == H256
    assert parse_checksum_file(text, name, "sha512") == H512


def test_bsd_format_without_spaces() -> None:
    assert parse_checksum_file(f"SHA256(disk.img)= {H256}", "disk.img", "sha256") == H256


def test_bare_digest_file() -> None:
    assert parse_checksum_file(f"{H512}\n", "alpine.qcow2", "sha512") == H512


def test_missing_file_is_not_found() -> None:
    with pytest.raises(NotFound) as err:
        parse_checksum_file(f"{H256}  other.img\n", "disk.img", "sha256")
    assert "disk.img" in err.value.message


def test_conflicting_entries_are_refused() -> None:
    text = f"{H256}  disk.img\n{'c' * 64}  disk.img\n"
    with pytest.raises(InvalidInput):
        parse_checksum_file(text, "disk.img", "sha256")


def test_bsd_digest_of_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_checksum_file("SHA256 (disk.img) = abcd", "disk.img", "sha256")


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_checksum_file(f"{H256}  disk.img", "disk.img", "crc32")
    assert err.value.hint is not None
