"""What every frontend shows, answered by the engine (not the CLI), on the fake driver:
the serial-log tail, the KVM re-probe, the machine types with host shares, and the
create wizard's image menu."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main
from cloudlet.engine import accel_cache, image_menu, type_listing
from cloudlet.engine.engine import Engine
from cloudlet.engine.image_views import CatalogEntryView, ImageView
from cloudlet.errors import InvalidInput, NotFound
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.store import Image
from cloudlet.spec.document import VMBody
from cloudlet.spec.machine_types import CATALOG
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home", cpus=4, memory=8 * GIB)
    monkeypatch.setattr(main, "_engine", lambda: e)
    return e


def _cli(*args: str) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(main.app, list(args))
    return result.exit_code, result.stdout_bytes, result.stderr


# ----------------------------------------------------------------------- serial log
def _write_log(engine: Engine, vm: str, older: bytes, newer: bytes) -> None:
    path = engine.serial_log(vm)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name("serial.log.1").write_bytes(older)
    path.write_bytes(newer)


def test_serial_log_tail_reads_the_rotated_part_first_and_keeps_the_last_lines(
    engine: Engine,
) -> None:
    engine.create("web1", VMBody(state="stopped"))
    assert engine.serial_log_tail("web1").data is None
    assert not engine.serial_log_tail("web1", 3).started
    _write_log(engine, "web1", b"one\ntwo\n", b"three\nfour\nfive")
    log = engine.serial_log_tail("web1")
    assert log.vm == "web1" and log.started and log.data == b"one\ntwo\nthree\nfour\nfive"
    assert engine.serial_log_tail("web1", 2).data == b"four\nfive\n"
    assert engine.serial_log_tail("web1", 4).data == b"two\nthree\nfour\nfive\n"
    assert engine.serial_log_tail("web1", 99).data == b"one\ntwo\nthree\nfour\nfive\n"
    assert engine.serial_log_tail("web1", 0).data == b""
    with pytest.raises(InvalidInput, match="cannot show -1 lines"):
        engine.serial_log_tail("web1", -1)
    with pytest.raises(NotFound):
        engine.serial_log_tail("nosuch")


def test_logs_command_prints_what_the_engine_returns(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    code, out, err = _cli("logs", "web1")
    assert code == 0 and out == b"" and "has no serial log yet" in err
    _write_log(engine, "web1", b"", b"a\nb\nc\n")
    assert _cli("logs", "web1", "-n", "2")[:2] == (0, b"b\nc\n")
    assert _cli("logs", "web1")[:2] == (0, b"a\nb\nc\n")


# ----------------------------------------------------------------------- KVM re-probe
def test_reprobe_forgets_the_cached_verdict_and_probes_again(engine: Engine) -> None:
    probes: list[str] = []

    def accel(image: Image) -> AccelVerdict:
        probes.append(image.name)
        return AccelVerdict("tcg", "probed again")

    engine.deps = dataclasses.replace(engine.deps, accel=accel)
    cache = accel_cache.cache_file(engine.paths.home)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text('{"accel": "kvm", "reason": "stale"}')
    view = engine.reprobe_host()
    assert not cache.exists() and probes == ["tiny"]
    assert (view.accel, view.accel_reason) == ("tcg", "probed again")
    assert not accel_cache.forget(engine.paths.home)  # nothing left to forget
    cache.write_text("{}")
    code, _, _ = _cli("host", "--reprobe", "-o", "json")
    assert code == 0 and not cache.exists() and probes == ["tiny", "tiny"]
    cache.write_text("{}")
    assert _cli("host", "-o", "json")[0] == 0 and cache.exists()  # no re-probe asked


# ----------------------------------------------------------------------- machine types
def test_machine_types_carry_the_share_of_this_host(engine: Engine) -> None:
    offered = engine.machine_types()
    assert [t.name for t in offered] == list(CATALOG)
    by_name = {t.name: t for t in offered}
    micro = by_name["gp.micro"]  # 1 vCPU of 4, 0.5 GiB of 8: the vCPUs weigh more
    assert (micro.cpus, micro.memory, micro.share) == (1, GIB // 2, 0.25)
    for t in offered:
        assert t.share == max(t.cpus / 4, t.memory / (8 * GIB))
        assert t.family and t.to_dict() == {
            "name": t.name,
            "family": t.family,
            "cpus": t.cpus,
            "memory": t.memory,
        }
    assert all(t.share is None for t in type_listing.offers())


def test_types_command_shows_the_shares_and_json_without_them(engine: Engine) -> None:
    code, out, _ = _cli("types")
    assert code == 0 and "gp.micro" in out.decode() and "25%" in out.decode()
    code, out, _ = _cli("types", "-o", "json")
    assert code == 0 and b'"share"' not in out and b'"gp.micro"' in out


# ----------------------------------------------------------------------- image menu
def test_image_menu_offers_local_then_catalog_then_built_in_images(engine: Engine) -> None:
    choices = engine.image_menu()
    names = [c.name for c in choices]
    assert len(names) == len(set(names))
    by_name = {c.name: c for c in choices}
    assert names[:4] == ["acme", "cloudy", "mac", "tiny"]  # the fake host's images
    assert by_name["acme"].licence == "acme-os" and by_name["acme"].here
    assert by_name["cloudy"].cloud_init and by_name["cloudy"].default_user == "debian"
    assert not by_name["tiny"].cloud_init and not by_name["tiny"].runs_containers
    pulled = by_name["ubuntu-24.04"]
    assert not pulled.here and pulled.cloud_init and pulled.arch == "x86_64"
    assert "GPL" in pulled.licence and pulled.default_user
    assert by_name["debian-12"] == image_menu.ImageChoice(
        "debian-12", "built on first use", "free", True, here=True, disk_size=2 * GIB
    )


def test_image_choice_refuses_what_the_vm_cannot_run(engine: Engine) -> None:
    choices = engine.image_menu()
    assert image_menu.choose(choices, "tiny", containers=False).name == "tiny"
    assert image_menu.choose(choices, "cloudy", containers=True).name == "cloudy"
    with pytest.raises(InvalidInput, match="no cloud-init, so a container runtime"):
        image_menu.choose(choices, "tiny", containers=True)
    for bad in ("nosuch", "", "tiny\n", "../tiny"):
        with pytest.raises(InvalidInput, match="unknown image"):
            image_menu.choose(choices, bad, containers=False)


def _image(name: str, **fields: object) -> ImageView:
    base: dict[str, object] = dict(
        name=name, arch="", format="qcow2", os="", os_family="linux", licence="",
        min_disk_bytes=0, default_user=None, cloud_init=True, guest_agent=False,
        boot="firmware", path="/x",
    )  # fmt: skip
    return ImageView(**{**base, **fields})  # type: ignore[arg-type]


def test_image_menu_takes_empty_descriptions_without_failing() -> None:
    """Image descriptions come from image.json files: empty fields still make a usable
    choice (free licence, no arch, no size), never a traceback."""
    catalog = [
        CatalogEntryView("x", "shadowed", "x86_64", "free", "u", "https://x"),
        CatalogEntryView("y", "", "", "", "", "https://y"),
    ]
    choices = image_menu.menu([_image("x")], catalog)
    by_name = {c.name: c for c in choices}
    assert by_name["x"] == image_menu.ImageChoice("x", "", "free", True, here=True)
    assert by_name["y"] == image_menu.ImageChoice("y", "", "free", True, here=False)
    assert [c.name for c in choices] == ["x", "y", "tiny", "debian-12"]
