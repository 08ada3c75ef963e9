"""Guest users for file copies: /etc/passwd and /etc/group as hostile text, ~ paths, owners."""

from __future__ import annotations

import pytest

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.guest import accounts as acc

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "debian:x:1000:1000:Debian:/home/debian:/bin/bash\n"
    "broken line without fields\n"
    "evil:x:-1:0::/home/evil:/bin/sh\n"  # not a number
    "rel:x:7:7::home/rel:/bin/sh\n"  # a home that is not absolute
    "$(rm -rf /):x:8:8::/x:/bin/sh\n"  # not a user name
    "debian:x:2000:2000::/other:/bin/sh\n"  # a second entry of a name: the first wins
)
GROUP = "root:x:0:\nstaff:x:50:debian\nbad:x:notanumber:\n"


@pytest.fixture
def table() -> acc.GuestAccounts:
    return acc.parse_accounts(PASSWD, GROUP)


def test_odd_lines_are_skipped(table: acc.GuestAccounts) -> None:
    assert sorted(table.users) == ["debian", "root"]
    assert table.user("debian") == acc.Account("debian", 1000, 1000, "/home/debian")
    assert table.groups == {"root": 0, "staff": 50}


def test_a_huge_table_is_read_only_so_far() -> None:
    filler = "x" * (acc.MAX_TABLE_BYTES + 10) + "\n"
    table = acc.parse_accounts(filler + "late:x:5:5::/late:/bin/sh\n", "")
    assert table.users == {}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("/etc/hosts", "/etc/hosts"),
        ("", "/home/debian"),
        ("~", "/home/debian"),
        ("~/", "/home/debian"),
        ("~/notes/a b.txt", "/home/debian/notes/a b.txt"),
        ("notes/", "/home/debian/notes/"),
        ("~root/x", "/root/x"),
        ("~root", "/root"),
    ],
)
def test_guest_paths_resolve_as_scp_does(table: acc.GuestAccounts, text: str, want: str) -> None:
    assert acc.resolve_path(text, "debian", lambda: table) == want


def test_absolute_paths_never_ask_the_guest() -> None:
    def no_table() -> acc.GuestAccounts:
        raise AssertionError("the guest was asked")

    assert acc.resolve_path("/tmp/x", "debian", no_table) == "/tmp/x"


def test_unknown_users_and_odd_tildes_are_refused(table: acc.GuestAccounts) -> None:
    with pytest.raises(NotFound, match="no user 'nobody'"):
        acc.resolve_path("~nobody/x", "debian", lambda: table)
    with pytest.raises(NotFound, match="no user 'ghost'"):
        acc.resolve_path("~", "ghost", lambda: table)
    with pytest.raises(InvalidInput, match="names no user"):
        acc.resolve_path("~$(id)/x", "debian", lambda: table)
    with pytest.raises(InvalidInput, match="NUL"):
        acc.resolve_path("/x\0y", "debian", lambda: table)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("debian", acc.GuestOwner(1000, 1000)),
        ("debian:staff", acc.GuestOwner(1000, 50)),
        ("debian:7", acc.GuestOwner(1000, 7)),
        ("0", acc.GuestOwner(0, 0)),  # uid 0 is root: its group comes from passwd
        ("1234:99", acc.GuestOwner(1234, 99)),
    ],
)
def test_owners_become_numbers(table: acc.GuestAccounts, text: str, want: acc.GuestOwner) -> None:
    user, group = acc.parse_owner(text)
    assert acc.resolve_owner(user, group, table) == want


def test_numbers_alone_need_no_tables() -> None:
    assert not acc.needs_accounts("1234", "99")
    assert acc.needs_accounts("1234", None) and acc.needs_accounts("debian", "1")
    assert acc.resolve_owner("1234", "99", None) == acc.GuestOwner(1234, 99)


@pytest.mark.parametrize("text", ["", ":", "a:b:c", "-rf", "deb ian", "x" * 40, "9" * 11, "a:"])
def test_malformed_owners_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not USER or USER:GROUP"):
        acc.parse_owner(text)


def test_unknown_owners_are_not_found(table: acc.GuestAccounts) -> None:
    with pytest.raises(NotFound, match="no user 'ghost'"):
        acc.resolve_owner("ghost", None, table)
    with pytest.raises(NotFound, match="no group 'wheel'"):
        acc.resolve_owner("debian", "wheel", table)
    with pytest.raises(NotFound, match="uid 4321") as exc:
        acc.resolve_owner("4321", None, table)
    assert "4321:4321" in (exc.value.hint or "")
