"""Creating VMs from cloud-init images: input checked before anything exists."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest

from cloudlet.engine import launch
from cloudlet.engine.engine import Engine
from cloudlet.errors import Conflict, InvalidInput
from cloudlet.spec.document import AccessDoc, VMBody
from cloudlet.spec.instance import InstanceSpec
from tests.fakes import create_local, make_fake_engine

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host"


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_test.pub"
    path.write_text(KEY + "\n")
    return path


def nothing_created(engine: Engine) -> bool:
    return engine.instances() == [] and not any(engine.paths.instances.iterdir())


def test_seed_carries_user_key_and_user_data(engine: Engine, key: Path, tmp_path: Path) -> None:
    user_data = tmp_path / "cc.yaml"
    user_data.write_text("#cloud-config\nruncmd:\n  - [touch, /tmp/ran]\n")
    body = VMBody(
        image="cloudy", access=AccessDoc(ssh_keys=[str(key)]), user_data_file=str(user_data)
    )
    vm = create_local(engine, "db1", body)
    seed = Path(vm.paths["disk"]).parent / "seed.iso"
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, joliet_path="/user-data")
        text = buf.getvalue().decode()
    finally:
        iso.close()
    assert KEY.split()[1] in text and "/tmp/ran" in text and "debian" in text
    spec = InstanceSpec.model_validate_json(engine.ctx.row("db1").spec_json)
    assert spec.access.user == "debian" and spec.access.ssh_public_keys[0].startswith("ssh-ed25519")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("#cloud-config\nruncmd: [unclosed\n", "line"),
        ("#!/bin/sh\necho hi\n", "cloud-config"),
        ("#cloud-config\n- just\n- a list\n", "mapping"),
    ],
)
def test_bad_user_data_creates_nothing(
    engine: Engine, key: Path, tmp_path: Path, content: str, fragment: str
) -> None:
    user_data = tmp_path / "bad.yaml"
    user_data.write_text(content)
    with pytest.raises(InvalidInput) as exc:
        create_local(engine, "db1", VMBody(image="cloudy", user_data=user_data.read_text()))
    assert fragment in exc.value.one_line()
    assert nothing_created(engine)


def test_unreadable_or_bogus_key_creates_nothing(engine: Engine, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("not a key\n")
    for path in (tmp_path / "missing.pub", bogus):
        with pytest.raises(InvalidInput):
            create_local(
                engine, "db1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=[str(path)]))
            )
    with pytest.raises(InvalidInput, match="damaged key body"):
        engine.create("db1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=["ssh-rsa bogus"])))
    assert nothing_created(engine)


def test_cloud_init_options_on_an_image_without_it(engine: Engine, key: Path) -> None:
    with pytest.raises(InvalidInput, match="no cloud-init"):
        create_local(engine, "t1", VMBody(image="tiny", access=AccessDoc(ssh_keys=[str(key)])))
    assert nothing_created(engine)


def test_architecture_this_host_cannot_run(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="cannot run aarch64"):
        launch.check_arch(engine.ctx, "aarch64", "modern")
    with pytest.raises(InvalidInput, match="legacy"):
        engine.deps.arches = lambda: {"x86_64": "q", "aarch64": "q"}
        launch.check_arch(engine.ctx, "aarch64", "legacy")


def test_image_delete_refused_while_in_use(engine: Engine) -> None:
    engine.create("t1", VMBody(image="acme", state="stopped"))
    with pytest.raises(Conflict, match="used by t1"):
        engine.image_delete("acme")
    engine.delete("t1")
    assert engine.image_delete("acme").message == "image acme deleted"


def test_catalog_lists_official_images_with_their_users(engine: Engine) -> None:
    entries = {c.name: c for c in engine.catalog()}
    assert entries["ubuntu-24.04"].default_user == "ubuntu"
    assert all(c.url.startswith("https://") for c in entries.values())
    assert list(entries["ubuntu-24.04"].to_dict()) == [
        "name",
        "title",
        "arch",
        "licence",
        "default_user",
        "url",
    ]
