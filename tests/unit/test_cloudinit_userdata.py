"""User data validation and the merge of the user's cloud-config into cloudlet's."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cloudlet.cloudinit import build_user_data, validate_user_data
from cloudlet.errors import InvalidInput

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"


def test_valid_cloud_config_is_returned() -> None:
    text = "#cloud-config\nruncmd:\n  - [touch, /x]\n"
    assert validate_user_data(text) == text


def test_header_only_is_an_empty_config() -> None:
    assert validate_user_data("#cloud-config") == "#cloud-config\n"


def test_bad_yaml_names_the_line() -> None:
    text = "#cloud-config\nruncmd:\n  - ok\n bad: [unclosed\n"
    with pytest.raises(InvalidInput, match=r"line [45]"):
        validate_user_data(text)


def test_tab_indentation_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="line 3"):
        validate_user_data("#cloud-config\npackages:\n\t- vim\n")


def test_shell_script_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_user_data("#!/bin/sh\necho hi\n")
    assert "script" in info.value.message
    assert info.value.hint is not None and "runcmd" in info.value.hint


@pytest.mark.parametrize(
    "text", ["runcmd: [ls]\n", "#include\nhttp://x/y\n", "Content-Type: multipart/mixed\n", ""]
)
def test_other_formats_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="#cloud-config"):
        validate_user_data(text)


def test_a_list_is_not_a_mapping() -> None:
    with pytest.raises(InvalidInput, match="not a mapping"):
        validate_user_data("#cloud-config\n- a\n- b\n")


def _load(text: str) -> dict[str, Any]:
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_generated_config_has_the_user_and_no_passwords() -> None:
    data = _load(build_user_data("web-1", "debian", [KEY], None))
    assert data["hostname"] == "web-1"
    assert "fqdn" not in data
    assert data["ssh_pwauth"] is False
    assert data["disable_root"] is True
    (user,) = data["users"]
    assert user["name"] == "debian"
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["shell"] == "/bin/bash"
    assert user["lock_passwd"] is True
    assert data["ssh"] == {"emit_keys_to_console": True}


def test_merge_keeps_the_users_runcmd_and_both_users() -> None:
    extra = "#cloud-config\nruncmd:\n  - echo theirs\nusers:\n  - default\n  - name: alice\n"
    merged = _load(build_user_data("web-1", "debian", [KEY], extra))
    assert merged["runcmd"] == ["echo theirs"]
    names = [u["name"] for u in merged["users"]]
    assert names == ["debian", "alice"]


def test_merge_keeps_both_runcmds_and_merges_mappings() -> None:
    from cloudlet.cloudinit.userdata import merge_config

    got = merge_config(
        {"runcmd": ["a"], "ssh": {"emit_keys_to_console": True}, "x": 1},
        {"runcmd": ["b"], "ssh": {"other": 2}, "x": 2, "packages": ["vim"]},
    )
    assert got == {
        "runcmd": ["a", "b"],
        "ssh": {"emit_keys_to_console": True, "other": 2},
        "x": 2,
        "packages": ["vim"],
    }


def test_user_scalars_win() -> None:
    extra = "#cloud-config\nssh_pwauth: true\n"
    assert _load(build_user_data("h", "debian", [KEY], extra))["ssh_pwauth"] is True


def test_conflicting_hostname_is_refused() -> None:
    with pytest.raises(InvalidInput, match="hostname"):
        build_user_data("web-1", "debian", [KEY], "#cloud-config\nhostname: other\n")


def test_users_must_be_a_list() -> None:
    with pytest.raises(InvalidInput, match="users"):
        build_user_data("web-1", "debian", [KEY], "#cloud-config\nusers: alice\n")


def test_bad_extra_user_data_is_refused() -> None:
    with pytest.raises(InvalidInput):
        build_user_data("web-1", "debian", [KEY], "#!/bin/bash\ntrue\n")
