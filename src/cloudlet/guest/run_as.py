"""Running a guest program as one of the guest's users, with that user's environment.

The guest agent runs everything as root with an almost empty environment. These
are the guest-side halves: a lookup of the user's passwd entry (whose answer is
guest data, so it is checked like any hostile input) and a POSIX sh wrapper that
gives the program HOME, USER, LOGNAME, SHELL and a sane PATH and drops to the
user's uid and gid. User text only ever travels as separate arguments: the
scripts are constants, never built from input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudlet.errors import GuestError, NotFound
from cloudlet.spec.names import login_user

# The user's passwd entry: getent where there is one (NSS users), else /etc/passwd.
LOOKUP_SCRIPT = r"""getent passwd "$1" 2>/dev/null && exit 0
awk -F: -v u="$1" '$1 == u { print; found = 1; exit } END { exit !found }' /etc/passwd
"""

# $1 name, $2 uid, $3 gid, $4 home, $5 shell, $6 TERM (may be empty), $7 "--", then
# the program (none: the user's login shell). Drops privileges with util-linux
# setpriv, or su where there is none (busybox; "--" ends its options, which it would
# otherwise look for among the program's words too).
RUN_AS_SCRIPT = r"""name=$1 uid=$2 gid=$3 home=$4 shell=$5 term=$6
shift 7
if [ "$uid" = 0 ]; then path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
else path=/usr/local/bin:/usr/bin:/bin; fi
[ $# -gt 0 ] || set -- "$shell" -l
cd "$home" 2>/dev/null || cd /
if [ "$uid" != 0 ] && [ -t 0 ]; then
    t=$(tty) && chown "$uid" "$t" 2>/dev/null
fi
[ -z "$term" ] || set -- "TERM=$term" "$@"
set -- env -i "HOME=$home" "USER=$name" "LOGNAME=$name" "SHELL=$shell" "PATH=$path" "$@"
[ "$(id -u)" != "$uid" ] || exec "$@"
if setpriv --help 2>&1 | grep -q -e --reuid; then
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups -- "$@"
fi
exec su -p -s /bin/sh -c 'exec "$0" "$@"' -- "$name" "$@"
"""

RUN_AS_NAME = "cloudlet-run-as"
LOOKUP_NAME = "cloudlet-user"
DEFAULT_SHELL = "/bin/sh"
# A passwd line longer than this is not one.
MAX_ENTRY = 4096
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_GUEST_PATH = re.compile(r"/[^\x00-\x1f\x7f:]{0,1023}")


@dataclass(frozen=True)
class GuestAccount:
    """One guest user as its passwd entry describes it."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def lookup_argv(name: str) -> list[str]:
    """The guest command that prints ``name``'s passwd entry (exit 0) or nothing."""
    return ["sh", "-c", LOOKUP_SCRIPT, LOOKUP_NAME, login_user(name)]


def parse_account(name: str, exit_code: int, stdout: bytes) -> GuestAccount:
    """The lookup's answer: NotFound for an unknown user, GuestError for nonsense."""
    if exit_code != 0 or not stdout.strip():
        raise NotFound(
            f"the guest has no user {name!r}",
            hint="name a user that exists in the guest (root always does)",
        )
    line = stdout[:MAX_ENTRY].split(b"\n", 1)[0].decode("utf-8", "replace")
    fields = line.split(":")
    if len(fields) != 7 or fields[0] != name:
        raise GuestError(f"the guest answered the lookup of user {name!r} with nonsense")
    try:
        uid, gid = int(fields[2]), int(fields[3])
    except ValueError:
        raise GuestError(f"the guest gave user {name!r} a uid or gid that is no number") from None
    if not (0 <= uid < 2**32 and 0 <= gid < 2**32):
        raise GuestError(f"the guest gave user {name!r} an impossible uid or gid")
    home = fields[5] if _GUEST_PATH.fullmatch(fields[5]) else "/"
    shell = fields[6] if _GUEST_PATH.fullmatch(fields[6]) else DEFAULT_SHELL
    return GuestAccount(name, uid, gid, home, shell)


def clean_term(value: str | None) -> str:
    """The host's TERM if it is a plausible terminal name, else a safe default."""
    return value if value and _TERM.fullmatch(value) else "xterm"


def run_as_argv(account: GuestAccount, argv: list[str], *, term: str = "") -> list[str]:
    """The guest command that runs ``argv`` (empty: a login shell) as ``account``."""
    return [
        "sh",
        "-c",
        RUN_AS_SCRIPT,
        RUN_AS_NAME,
        account.name,
        str(account.uid),
        str(account.gid),
        account.home,
        account.shell,
        term,
        "--",
        *argv,
    ]


def split_run_as(argv: list[str]) -> tuple[GuestAccount, str, list[str]] | None:
    """The account, TERM and program of a ``run_as_argv`` command (for fake guests)."""
    if argv[:4] != ["sh", "-c", RUN_AS_SCRIPT, RUN_AS_NAME] or len(argv) < 11:
        return None
    name, uid, gid, home, shell, term = argv[4:10]
    return GuestAccount(name, int(uid), int(gid), home, shell), term, argv[11:]
