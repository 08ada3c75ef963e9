"""Licences: seats for proprietary images, and OSes whose licence forbids this host."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.cli import wording
from cloudlet.engine import licensing
from cloudlet.engine.engine import Engine
from cloudlet.engine.image_views import LicenceView
from cloudlet.errors import Conflict, InvalidInput
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def test_proprietary_image_needs_registered_seats(engine: Engine) -> None:
    with pytest.raises(Conflict) as exc:
        engine.create("a1", VMBody(image="acme"))
    assert "cloudlet" not in exc.value.one_line()
    assert exc.value.next_steps == (step(Step.LICENCE_ADD, licence="acme-os"),)
    assert "(cloudlet license add acme-os --seats SEATS)" in wording.error_line(exc.value)
    assert engine.instances() == []


def test_seats_are_counted_by_running_vms(engine: Engine) -> None:
    engine.license_add("acme-os", 1)
    engine.create("a1", VMBody(image="acme"))
    with pytest.raises(Conflict, match="has 1 seats and 1 are in use"):
        engine.create("a2", VMBody(image="acme"))
    assert [v.name for v in engine.instances()] == ["a1"]
    engine.create("a2", VMBody(image="acme", state="stopped"))
    with pytest.raises(Conflict, match="1 are in use"):
        engine.start("a2")
    engine.stop("a1")
    assert engine.start("a2").instance.state == "running"
    assert engine.licences() == [LicenceView("acme-os", 1, 1)]
    engine.license_add("acme-os", 2)
    assert engine.start("a1").instance.state == "running"


def test_free_images_need_no_seats(engine: Engine) -> None:
    for n in range(3):
        engine.create(f"t{n}", VMBody())


def test_macos_is_refused_off_apple_hardware(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sys_vendor").write_text("QEMU\n")
    assert not licensing.host_is_apple_hardware(tmp_path)
    monkeypatch.setattr(licensing, "DMI", tmp_path)
    engine.license_add("apple-eula", 5)
    with pytest.raises(Conflict, match="only on Apple hardware"):
        engine.create("mac1", VMBody(image="mac"))
    assert engine.instances() == []


def test_apple_vendor_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "sys_vendor").write_text("Apple Inc.\n")
    assert licensing.host_is_apple_hardware(tmp_path)


def test_negative_seats_refused(engine: Engine) -> None:
    with pytest.raises(InvalidInput):
        engine.license_add("x", -1)
