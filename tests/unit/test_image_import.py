"""Import safety checks on crafted info dicts and crafted files (no qemu-img here)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.images.importer import check_magic, check_safe, import_image, sniff_format

CLEAN_QCOW2: dict[str, Any] = {
    "virtual-size": 1048576,
    "filename": "/tmp/x.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {"compat": "1.1", "refcount-bits": 16, "corrupt": False},
    },
    "dirty-flag": False,
}


def _info(**changes: Any) -> dict[str, Any]:
    info = copy.deepcopy(CLEAN_QCOW2)
    info.update(changes)
    return info


def _refused(info: dict[str, Any], declared: str = "qcow2") -> str:
    with pytest.raises(InvalidInput) as err:
        check_safe(info, declared)
    assert err.value.hint
    return err.value.message


def test_clean_images_pass() -> None:
    check_safe(CLEAN_QCOW2, "qcow2")
    check_safe({"virtual-size": 4096, "format": "raw"}, "raw")
    check_safe({"virtual-size": 4096, "format": "raw"}, "iso")


def test_backing_file_is_refused() -> None:
    info = _info(**{"backing-filename": "/etc/passwd", "full-backing-filename": "/etc/passwd"})
    assert "backing-filename" in _refused(info)
    assert "full-backing-filename" in _refused(_info(**{"full-backing-filename": "/etc/shadow"}))
    assert "backing-image" in _refused(_info(**{"backing-image": {"filename": "/etc/shadow"}}))


def test_external_data_file_is_refused() -> None:
    info = _info()
    info["format-specific"]["data"]["data-file"] = "/dev/sda"
    message = _refused(info)
    assert "format-specific.data.data-file" in message and "/dev/sda" in message


def test_vmdk_is_refused() -> None:
    info = {
        "virtual-size": 1048576,
        "format": "vmdk",
        "format-specific": {
            "type": "vmdk",
            "data": {"extents": [{"filename": "/etc/shadow", "format": "FLAT"}]},
        },
    }
    message = _refused(info)
    assert "extents" in message and "/etc/shadow" in message
    assert "format" in _refused({"virtual-size": 1, "format": "vmdk"})


def test_extents_in_any_format_are_refused() -> None:
    info = _info()
    info["format-specific"]["data"]["extents"] = [{"filename": "/etc/shadow"}]
    assert "extents" in _refused(info)


def test_format_other_than_declared_is_refused() -> None:
    assert "format is 'qcow2', declared raw" in _refused(CLEAN_QCOW2, "raw")
    assert "declared iso" in _refused(CLEAN_QCOW2, "iso")
    assert "format is 'raw'" in _refused({"virtual-size": 1, "format": "raw"}, "qcow2")


def test_extra_children_are_refused() -> None:
    info = _info(children=[{"name": "file", "info": {}}, {"name": "data-file", "info": {}}])
    assert "children" in _refused(info)
    check_safe(_info(children=[{"name": "file", "info": {}}]), "qcow2")


def test_encrypted_corrupt_and_empty_are_refused() -> None:
    assert "encrypted" in _refused(_info(encrypted=True))
    corrupt = _info()
    corrupt["format-specific"]["data"]["corrupt"] = True
    assert "corrupt" in _refused(corrupt)
    assert "virtual-size" in _refused(_info(**{"virtual-size": 0}))


def test_undeclarable_formats_are_refused() -> None:
    with pytest.raises(InvalidInput):
        check_safe(CLEAN_QCOW2, "vmdk")


# ---------------------------------------------------------------- magic


def _file(tmp_path: Path, name: str, *parts: tuple[int, bytes], size: int = 0x9000) -> Path:
    data = bytearray(size)
    for offset, blob in parts:
        data[offset : offset + len(blob)] = blob
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([(0, b"QFI\xfb\x00\x00\x00\x03")], "qcow2"),
        ([(0, b"KDMV\x01\x00\x00\x00")], "vmdk"),
        ([(0, b"# Disk DescriptorFile\nversion=1\n")], "vmdk"),
        ([(0, b"<<< QEMU VM Virtual Disk Image >>>\n"), (0x40, b"\x7f\x10\xda\xbe")], "vdi"),
        ([(0, b"vhdxfile")], "vhdx"),
        ([(0, b"QED\x00")], "qed"),
        ([(0x8001, b"CD001")], "iso"),
        ([(0x1FE, b"\x55\xaa")], None),
        ([], None),
    ],
)
def test_sniff_format(tmp_path: Path, parts: list[tuple[int, bytes]], expected: str | None) -> None:
    assert sniff_format(_file(tmp_path, "f", *parts)) == expected


def test_sniff_short_file(tmp_path: Path) -> None:
    assert sniff_format(_file(tmp_path, "f", (0, b"QFI\xfb"), size=4)) == "qcow2"
    assert sniff_format(_file(tmp_path, "g", size=0)) is None


@pytest.mark.parametrize("magic", [b"QFI\xfb", b"KDMV", b"vhdxfile", b"QED\x00"])
def test_raw_carrying_an_image_magic_is_refused(tmp_path: Path, magic: bytes) -> None:
    path = _file(tmp_path, "disk.raw", (0, magic))
    with pytest.raises(InvalidInput) as err:
        check_magic(path, "raw")
    assert "declared raw but looks like" in err.value.message


def test_declared_raw_but_looks_like_qcow2(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="declared raw but looks like qcow2"):
        check_magic(_file(tmp_path, "disk.raw", (0, b"QFI\xfb")), "raw")


def test_plain_raw_and_raw_iso_pass(tmp_path: Path) -> None:
    check_magic(_file(tmp_path, "a", (0x1FE, b"\x55\xaa")), "raw")
    check_magic(_file(tmp_path, "b", (0x8001, b"CD001")), "raw")


def test_declared_qcow2_must_be_qcow2(tmp_path: Path) -> None:
    check_magic(_file(tmp_path, "a", (0, b"QFI\xfb")), "qcow2")
    with pytest.raises(InvalidInput, match="declared qcow2 but looks like vmdk"):
        check_magic(_file(tmp_path, "b", (0, b"KDMV")), "qcow2")
    with pytest.raises(InvalidInput, match="declared qcow2 but looks like raw data"):
        check_magic(_file(tmp_path, "c"), "qcow2")


def test_iso_needs_cd001(tmp_path: Path) -> None:
    check_magic(_file(tmp_path, "a", (0x8001, b"CD001")), "iso")
    with pytest.raises(InvalidInput, match="no ISO9660 signature"):
        check_magic(_file(tmp_path, "b"), "iso")
    with pytest.raises(InvalidInput, match="looks like qcow2"):
        check_magic(_file(tmp_path, "c", (0, b"QFI\xfb"), (0x8001, b"CD001")), "iso")


# ---------------------------------------------------------------- import: refusals before qemu-img


def test_import_refuses_bad_names_and_formats(tmp_path: Path) -> None:
    src = _file(tmp_path, "disk.raw")
    with pytest.raises(InvalidInput, match="invalid image name"):
        import_image(src, "Bad_Name", "raw", tmp_path / "images")
    with pytest.raises(InvalidInput, match="cannot import format"):
        import_image(src, "good", "vmdk", tmp_path / "images")
    with pytest.raises(NotFound):
        import_image(tmp_path / "missing", "good", "raw", tmp_path / "images")
    with pytest.raises(InvalidInput, match="not a regular file"):
        import_image(tmp_path, "good", "raw", tmp_path / "images")


def test_import_refuses_existing_and_builtin_names(tmp_path: Path) -> None:
    src = _file(tmp_path, "disk.raw")
    root = tmp_path / "images"
    (root / "taken" / "abc").mkdir(parents=True)
    os.symlink("abc", root / "taken" / "current")
    for name in ("taken", "tiny"):
        with pytest.raises(Conflict):
            import_image(src, name, "raw", root)


def test_refused_magic_leaves_nothing_behind(tmp_path: Path) -> None:
    src = _file(tmp_path, "disk.raw", (0, b"QFI\xfb"))
    root = tmp_path / "images"
    with pytest.raises(InvalidInput, match="declared raw but looks like qcow2"):
        import_image(src, "sneaky", "raw", root)
    assert list(root.iterdir()) == []
