"""Image safety without subprocesses: the staging sweep (only what cloudlet named,
never while its maker lives, never through a link), limits, argv and the size cap."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cloudlet.errors import InvalidInput, LimitExceeded
from cloudlet.host import run as host_run
from cloudlet.host.run import Limits, _limit_hit
from cloudlet.images import untrusted
from cloudlet.images.importer import check_clean
from cloudlet.spec.document import VMBody
from cloudlet.storage.staging import PREFIX, staging, sweep
from tests.fakes import make_fake_engine


def _plant(parent: Path) -> tuple[Path, Path, Path]:
    """A stale staging dir, a stale staging link to a directory outside, an unrelated file."""
    stale = parent / f"{PREFIX}dead"
    stale.mkdir(parents=True)
    (stale / "source.qcow2").write_bytes(b"x" * 4096)
    outside = parent.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep").write_text("canary")
    (parent / f"{PREFIX}link").symlink_to(outside)
    unrelated = parent / ".import-not-ours"
    unrelated.write_text("keep me")
    return stale, outside, unrelated


def test_sweep_removes_only_staging_and_never_follows_links(tmp_path: Path) -> None:
    parent = tmp_path / "images"
    stale, outside, unrelated = _plant(parent)
    assert sweep(parent) == [f"{PREFIX}dead", f"{PREFIX}link"]
    assert not stale.exists() and not (parent / f"{PREFIX}link").is_symlink()
    assert (outside / "keep").read_text() == "canary"
    assert unrelated.read_text() == "keep me"
    assert sorted(p.name for p in parent.iterdir()) == [".import-not-ours"]


def test_sweep_waits_for_a_live_stager(tmp_path: Path) -> None:
    parent = tmp_path / "images"
    with staging(parent) as work:
        (work / "source.raw").write_bytes(b"half")
        assert sweep(parent) == []  # its maker holds the directory
        assert work.is_dir() and work.name.startswith(PREFIX)
        assert oct(work.stat().st_mode & 0o777) == "0o700"
    assert list(parent.iterdir()) == []  # and it cleans up after itself


def test_recovery_sweeps_the_image_store_and_pools(short_tmp: Path) -> None:
    engine = make_fake_engine(short_tmp / "home")
    pool = Path(engine.storage.pools()[0].path)  # the default pool
    image_stale, _, image_unrelated = _plant(engine.paths.images)
    pool_stale = pool / f"{PREFIX}vm-import"
    pool_stale.mkdir()
    notes = engine.recover()
    assert not image_stale.exists() and not pool_stale.exists()
    assert image_unrelated.exists()
    assert any(
        n.what == "staging" and n.name == str(pool) and "interrupted import" in n.message
        for n in notes
    ), notes


def test_limit_hits_are_named_by_how_the_child_ended() -> None:
    limits = Limits(wall=9, cpu=3, memory=64 << 20, file_size=1 << 20)
    assert _limit_hit(-24, "", limits) == "CPU limit (3 s)"
    assert _limit_hit(-25, "", limits) == "file-size limit (1 MiB)"
    assert _limit_hit(1, "qemu-img: Cannot allocate memory", limits) == "memory limit (64 MiB)"
    assert _limit_hit(-6, "", limits) == "memory limit (64 MiB)"
    assert _limit_hit(1, "qemu-img: Could not open: Invalid argument", limits) is None
    assert LimitExceeded.exit_code == 2


def test_qemu_img_sees_a_pinned_format_and_a_descriptor(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def record(argv: object) -> None:
        seen.append(list(argv))  # type: ignore[call-overload]
        raise Stop

    image = tmp_path / "x.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(508))
    image.chmod(0o600)
    host_run.set_guard(record)
    for call in (untrusted.info, untrusted.check):
        with pytest.raises(Stop):
            call(image, "qcow2", "x.qcow2")
    assert [a[1:5] for a in seen] == [
        ["info", "-f", "qcow2", "--output=json"],
        ["check", "-f", "qcow2", "--output=json"],
    ]
    assert all(a[5].startswith("/dev/fd/") and a[5][8:].isdigit() for a in seen)
    assert oct(image.stat().st_mode & 0o777) == "0o600"  # readable by others only during the call
    assert not any(str(tmp_path) in arg for a in seen for arg in a)
    assert os.path.basename(seen[0][0]).startswith("qemu-img")


def test_create_refuses_a_disk_over_the_cap(short_tmp: Path) -> None:
    engine = make_fake_engine(short_tmp / "home")
    with pytest.raises(InvalidInput, match=r"the disk of big has a virtual size of 1024 TiB, over"):
        engine.create("big", VMBody.model_validate({"disk_size": "1048576G"}))
    assert engine.instances() == []
    capped = dataclasses.replace(engine.settings, max_image_size=1 << 20)
    engine.settings = engine.ctx.settings = capped
    with pytest.raises(InvalidInput, match=r"256 MiB, over this host's cap of 1 MiB") as err:
        engine.create("small", VMBody())  # the image itself is over 1 MiB
    assert "raise images.max_virtual_size in config.toml" in (err.value.hint or "")
    assert engine.instances() == []


def test_the_cap_is_read_from_config_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlet.config import Settings

    monkeypatch.delenv("CLOUDLET_MAX_IMAGE_SIZE", raising=False)
    assert Settings.load(tmp_path).max_image_size is None
    (tmp_path / "config.toml").write_text('[images]\nmax_virtual_size = "2T"\n')
    assert Settings.load(tmp_path).max_image_size == 2 << 40
    monkeypatch.setenv("CLOUDLET_MAX_IMAGE_SIZE", "500")  # a bare number is GiB
    assert Settings.load(tmp_path).max_image_size == 500 << 30
    monkeypatch.setenv("CLOUDLET_MAX_IMAGE_SIZE", "lots")
    with pytest.raises(InvalidInput, match=r"invalid images\.max_virtual_size 'lots'"):
        Settings.load(tmp_path)


def test_staging_works_in_a_linked_pool_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    linked = tmp_path / "pool"
    linked.symlink_to(real)
    with staging(linked) as work:
        (work / "v.qcow2").write_bytes(b"half")
        assert [p.name for p in real.iterdir()] == [work.name]
    (real / f"{PREFIX}stale").mkdir()
    assert sweep(linked) == [f"{PREFIX}stale"]
    assert list(real.iterdir()) == []


@pytest.mark.parametrize(
    ("report", "refused"),
    [
        ({"check-errors": 0, "image-end-offset": 262144}, None),
        ({"check-errors": 0, "corruptions": 0, "leaks": 0}, None),
        ({"check-errors": 2}, r"\(2 check-errors\)"),
        ({"check-errors": 0, "corruptions": 30, "leaks": 1}, r"\(30 corruptions, 1 leaks\)"),
        ({"leaks": 4}, r"\(4 leaks\)"),
        ({"corruptions-fixed": 1}, r"\(repairs\)"),
    ],
)
def test_a_check_report_passes_only_when_clean(report: dict[str, int], refused: str | None) -> None:
    if refused is None:
        check_clean(report, "x.qcow2")
    else:
        with pytest.raises(InvalidInput, match=r"x\.qcow2 fails qemu-img check " + refused):
            check_clean(report, "x.qcow2")


def test_leftovers_of_earlier_versions_are_swept_by_their_exact_names(short_tmp: Path) -> None:
    engine = make_fake_engine(short_tmp / "home")
    pool = Path(engine.storage.pools()[0].path)
    old_image = engine.paths.images / ".import-k2j_9x0a"
    old_image.mkdir()
    (old_image / "source.qcow2").write_bytes(b"old")
    old_volume = pool / ".import-0badcafe.qcow2"
    old_volume.write_bytes(b"old")
    keep = [
        pool / ".import-0badcafe.qcow2.mine",
        pool / ".import-notes",
        engine.paths.images / ".import-x",
    ]
    for path in keep:
        path.write_text("keep")
    engine.recover()
    assert not old_image.exists() and not old_volume.exists()
    assert all(path.read_text() == "keep" for path in keep)
