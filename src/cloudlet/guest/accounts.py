"""The guest's users as a file copy needs them: whose home ``~`` is, who owns a copy.

The guest writes its own /etc/passwd and /etc/group, so both are read as hostile text:
bounded in bytes and lines, malformed lines ignored, names and numbers checked. Guest
paths are resolved as scp does: ``~`` and ``~/x`` are the login user's home, ``~name``
another user's, a relative path is below the login user's home.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from cloudlet.errors import InvalidInput, NotFound

# Enough for tens of thousands of accounts; a guest cannot make the host read more.
MAX_TABLE_BYTES = 1024 * 1024
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
# A user or group as chown takes it: a name (as shadow-utils allow) or a number.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_NUMBER = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GuestOwner:
    """Numeric owner and group given to files copied into a guest."""

    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


ROOT = GuestOwner(0, 0)


@dataclass(frozen=True)
class GuestAccounts:
    """The guest's users and groups by name (first entry of a name wins, like getpwnam)."""

    users: dict[str, Account]
    groups: dict[str, int]

    def user(self, name: str) -> Account:
        found = self.users.get(name)
        if found is None:
            raise NotFound(
                f"the guest has no user {name!r} in its /etc/passwd",
                hint="check the user name; a new VM's user appears when its first boot ends",
            )
        return found

    def by_uid(self, uid: int) -> Account | None:
        return next((a for a in self.users.values() if a.uid == uid), None)


def _id(text: str) -> int | None:
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _lines(text: str) -> list[str]:
    return text[:MAX_TABLE_BYTES].splitlines()


def parse_accounts(passwd: str, group: str) -> GuestAccounts:
    """/etc/passwd and /etc/group as the guest wrote them; odd lines are skipped."""
    users: dict[str, Account] = {}
    for line in _lines(passwd):
        fields = line.split(":")
        if len(fields) != 7 or not _NAME.fullmatch(fields[0]):
            continue
        uid, gid, home = _id(fields[2]), _id(fields[3]), fields[5]
        if uid is None or gid is None or not home.startswith("/") or "\0" in home:
            continue
        users.setdefault(fields[0], Account(fields[0], uid, gid, posixpath.normpath(home)))
    groups: dict[str, int] = {}
    for line in _lines(group):
        fields = line.split(":")
        gid = _id(fields[2]) if len(fields) == 4 else None
        if gid is not None and _NAME.fullmatch(fields[0]):
            groups.setdefault(fields[0], gid)
    return GuestAccounts(users, groups)


def parse_owner(text: str) -> tuple[str, str | None]:
    """``USER[:GROUP]`` (names or numbers), checked before the guest is asked anything."""
    user, sep, group = text.partition(":")
    for part in (user, *((group,) if sep else ())):
        if not (_NAME.fullmatch(part) or _id(part) is not None):
            raise InvalidInput(
                f"owner {text!r} is not USER or USER:GROUP",
                hint="give a user name or number and maybe ':' and a group, such as debian:debian",
            )
    return user, (group if sep else None)


def needs_accounts(user: str, group: str | None) -> bool:
    """Whether resolving an owner needs the guest's tables (numbers alone do not)."""
    return _id(user) is None or group is None or _id(group) is None


def resolve_owner(user: str, group: str | None, accounts: GuestAccounts | None) -> GuestOwner:
    """Numbers for ``user`` and ``group``; a user alone gets its login group."""
    uid = _id(user)
    gid = None if group is None else _id(group)
    if uid is not None and gid is not None:
        return GuestOwner(uid, gid)
    if accounts is None:  # the caller asked needs_accounts(); this is a programming error
        raise ValueError("resolving a named owner needs the guest's accounts")
    account = accounts.user(user) if uid is None else accounts.by_uid(uid)
    if uid is None:
        assert account is not None
        uid = account.uid
    if group is None:
        if account is None:
            raise NotFound(
                f"the guest has no user with uid {uid}, so its group is unknown",
                hint=f"give the group too, such as {uid}:{uid}",
            )
        return GuestOwner(uid, account.gid)
    if gid is None:
        gid = accounts.groups.get(group)
        if gid is None:
            raise NotFound(
                f"the guest has no group {group!r} in its /etc/group", hint="check the group name"
            )
    return GuestOwner(uid, gid)


def is_absolute(path: str) -> bool:
    return path.startswith("/")


def resolve_path(path: str, login: str, accounts: Callable[[], GuestAccounts]) -> str:
    """An absolute guest path for ``path`` as scp reads it (``accounts`` asked only if needed).

    "" and "~" are the login user's home, "~/x" below it, "~name/x" below name's home, and
    any other relative path below the login user's home.
    """
    if "\0" in path:
        raise InvalidInput("a guest path cannot hold a NUL character", hint="check the path")
    if is_absolute(path):
        return path
    user, rest = login, path
    if path.startswith("~"):
        head, sep, tail = path[1:].partition("/")
        if head:
            if not _NAME.fullmatch(head):
                raise InvalidInput(
                    f"guest path {path!r} names no user after '~'",
                    hint="use ~/PATH, ~USER/PATH or an absolute path",
                )
            user = head
        rest = tail if sep else ""
    home = accounts().user(user).home
    # A trailing "/" keeps its meaning (a directory to copy into).
    return posixpath.join(home, rest) if rest else home
