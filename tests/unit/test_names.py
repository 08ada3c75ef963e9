"""Name validators (full match, lengths, one-line errors) and the name -> path helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloudlet.engine import access
from cloudlet.errors import InvalidInput
from cloudlet.spec import names
from cloudlet.spec.instance import AccessSpec, InstanceSpec

# Refused by every kind: path tricks, a trailing newline ($ would let it through), NUL,
# non-ASCII, an ssh option, empty.
EVERYWHERE = ["", ".", "..", "a/b", "/etc", "x\n", "x\r", "a\x00b", "é", "-oProxyCommand=x",
              "A", "a b", "a\tb"]  # fmt: skip
KINDS = {
    "vm": (names.vm_name, ["web1", "a", "a" * 63], ["1web", "web-", "a.b", "a_b", "a" * 64]),
    "image": (
        names.image_name,
        ["ubuntu-24.04", "debian-12", "tiny", "a" * 63],
        [".hidden", "a.", "a-", "9lives", "a" * 64],
    ),
    "snapshot": (names.snapshot_name, ["s1", "before-upgrade"], ["s.1", "a" * 64]),
    "volume": (names.volume_name, ["data1", "web1-vol0"], ["data.1", "a" * 64]),
    "pool": (names.pool_name, ["default", "fast"], ["fast/x", "a" * 64]),
    "network": (names.network_name, ["net1", "a" * 11], ["a" * 12, "nat", "none"]),
    "group": (names.group_name, ["web", "ssh-in"], ["g.1", "a" * 64]),
    "licence": (names.licence_name, ["acme-os", "apple-eula"], ["acme os", "a" * 64]),
    "backup id": (
        names.backup_id,
        ["20250101T120000-a1b2c3"],
        ["20250101T120000-A1B2C3", "20250101T120000-a1b2c3\n", "nope", "2025-01-01"],
    ),
    "login user": (
        names.login_user,
        ["debian", "_svc", "ops-1", "a" * 32],
        ["-l", "1user", "root@x", "a" * 33, "Debian"],
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_takes_its_names_and_refuses_the_rest_in_one_line(kind: str) -> None:
    check, good, bad = KINDS[kind]
    for name in good:
        assert check(name) == name
    for name in [*EVERYWHERE, *bad]:
        with pytest.raises(InvalidInput) as caught:
            check(name)
        line = caught.value.one_line()
        assert caught.value.exit_code == 2
        assert "\n" not in line and "\r" not in line and "\x00" not in line and "\t" not in line
        assert kind in line.lower(), line  # the error names the kind


def test_a_long_name_is_shown_cut_short() -> None:
    with pytest.raises(InvalidInput) as caught:
        names.vm_name("a" * 300)
    assert "(300 characters)" in caught.value.message and len(caught.value.one_line()) < 250


def test_validate_name_keeps_the_label_rule_under_any_label() -> None:
    assert names.validate_name("web1", what="pool name") == "web1"
    with pytest.raises(InvalidInput, match="invalid pool name 'x\\\\n'"):
        names.validate_name("x\n", what="pool name")


def test_name_path_stays_in_its_parent(tmp_path: Path) -> None:
    parent = tmp_path / "images"
    parent.mkdir()
    assert names.name_path(parent, "web1") == parent / "web1"
    assert names.name_path(parent, "vol", ".qcow2") == parent / "vol.qcow2"
    (parent / "inside").mkdir()
    (parent / "alias").symlink_to("inside")  # a link to a sibling stays inside
    assert names.name_path(parent, "alias") == parent / "alias"
    for bad in ["..", ".", "", "a/b", "/etc", "../x", "a\x00b"]:
        with pytest.raises(InvalidInput):
            names.name_path(parent, bad)


def test_name_path_refuses_a_link_out_of_its_parent(tmp_path: Path) -> None:
    parent, outside = tmp_path / "pool", tmp_path / "outside"
    parent.mkdir()
    outside.mkdir()
    (parent / "evil.qcow2").symlink_to(outside / "disk")
    (parent / "up").symlink_to("..")
    with pytest.raises(InvalidInput, match="leads outside"):
        names.name_path(parent, "evil", ".qcow2")
    with pytest.raises(InvalidInput, match="leads outside"):
        names.name_path(parent, "up")
    # An entry its owner linked elsewhere (images built once, shared): allowed when asked,
    # and still only that entry.
    assert names.name_path(parent, "evil", ".qcow2", links=True) == parent / "evil.qcow2"
    for bad in ["..", ".", "a/b", "/etc"]:
        with pytest.raises(InvalidInput):
            names.name_path(parent, bad, links=True)


def test_name_path_follows_a_linked_parent(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert names.name_path(tmp_path / "link", "web1") == tmp_path / "link" / "web1"


# ---------------------------------------------------------------- the login user and ssh
def test_access_user_is_validated_wherever_a_spec_comes_from() -> None:
    assert AccessSpec(user="debian").user == "debian"
    for bad in ["-oProxyCommand=x", "root\n", "a b", "x@y"]:
        with pytest.raises(ValidationError):
            AccessSpec(user=bad)
        base = {"name": "web1", "cpus": 1, "memory": 1}
        with pytest.raises(ValidationError, match="invalid login user"):
            InstanceSpec.model_validate({**base, "access": {"user": bad}})
        with pytest.raises(ValidationError, match="invalid login user"):  # exports carry JSON
            InstanceSpec.model_validate_json(json.dumps({**base, "access": {"user": bad}}))
    assert InstanceSpec.model_validate({**base, "access": {"user": "ops"}}).access.user == "ops"


def test_spec_names_from_files_are_validated_like_cli_names() -> None:
    assert InstanceSpec(name="web1", image="ubuntu-24.04", cpus=1, memory=1).image == "ubuntu-24.04"
    for field, bad in [("image", "../../x"), ("image", "/var/lib/img"), ("image", "tiny\n"),
                       ("name", "web1\n"), ("firewall", {"groups": ["../g"]})]:  # fmt: skip
        with pytest.raises(ValidationError, match=r"invalid (image|VM|firewall group) name"):
            InstanceSpec.model_validate({"name": "web1", "cpus": 1, "memory": 1, field: bad})


def test_ssh_gets_the_user_as_an_argument_never_as_an_option(tmp_path: Path) -> None:
    spec = AccessSpec(user="debian", ssh_private_key="/k/-id")
    options = access.ssh_options(spec, 2222, tmp_path / "known_hosts")
    assert options[:2] == ["-l", "debian"]
    assert options[options.index("-i") + 1] == "/k/-id"  # a value of -i, not an option
    # A record written before the user was validated still cannot become an option.
    forged = AccessSpec.model_construct(user="-oProxyCommand=x", ssh_public_keys=(),
                                        ssh_private_key=None)  # fmt: skip
    with pytest.raises(InvalidInput, match="login user"):
        access.ssh_options(forged, 2222, tmp_path / "known_hosts")
    with pytest.raises(InvalidInput, match="login user"):
        access.ssh_config("web1", forged, 2222, tmp_path / "known_hosts")
    config = access.ssh_config("web1", spec, 2222, tmp_path / "known_hosts")
    assert "  User debian\n" in config


def test_cloudlet_ssh_ends_options_before_the_host(short_tmp: Path) -> None:
    from cloudlet.spec.document import AccessDoc, VMBody
    from tests.fakes import make_fake_engine

    e = make_fake_engine(short_tmp / "home")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    view = e.create("web1", VMBody(image="cloudy", access=AccessDoc(ssh_keys=[key])))
    (e.paths.instance_dir(view.id) / "known_hosts").write_text("")
    argv = e.ssh_argv("web1", ["-oProxyCommand=x", "uname"])
    assert argv[argv.index("--") :] == ["--", "127.0.0.1", "-oProxyCommand=x", "uname"]
    assert argv[argv.index("-l") + 1] == "debian"
    assert not any(a.endswith("@127.0.0.1") for a in argv)
