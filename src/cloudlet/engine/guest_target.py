"""Where in a guest a copy goes and whom it belongs to: ``~`` paths and owners.

The login user is the VM's (its spec's user, else its image's default user, else
root). Its home and ids come from the guest's own /etc/passwd and /etc/group, read
through the agent at most once per copy and only when a name must be resolved.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cloudlet.engine.context import EngineContext
from cloudlet.errors import CloudletError, GuestError
from cloudlet.guest import accounts as acc
from cloudlet.images.store import Image
from cloudlet.spec.instance import InstanceSpec
from cloudlet.store.models import InstanceRow

# Seconds to read one account table through the agent.
READ_TIMEOUT = 60.0


def login_user(row: InstanceRow) -> str:
    """The user a person logs in as: the spec's, else the image's default, else root."""
    user = InstanceSpec.model_validate_json(row.spec_json).access.user
    if user is None:
        with contextlib.suppress(CloudletError, OSError, ValueError):
            user = Image.load(Path(row.image_path)).default_user
    return user or "root"


class GuestTarget:
    """Resolves guest paths and owners for one running VM."""

    def __init__(self, ctx: EngineContext, row: InstanceRow) -> None:
        self.ctx, self.row = ctx, row
        self.login = login_user(row)
        self._accounts: acc.GuestAccounts | None = None

    def accounts(self) -> acc.GuestAccounts:
        if self._accounts is None:
            self._accounts = acc.parse_accounts(self._read("/etc/passwd"), self._read("/etc/group"))
        return self._accounts

    def _read(self, path: str) -> str:
        result = self.ctx.driver.exec(self.row.id, ["cat", path], timeout=READ_TIMEOUT)
        if result.exit_code != 0 or result.signal is not None:
            raise GuestError(
                f"cannot read the guest's {path} to find its users",
                hint="give an absolute path and the owner as numbers (UID:GID)",
            )
        return result.stdout[: acc.MAX_TABLE_BYTES].decode(errors="replace")

    def path(self, text: str) -> str:
        """An absolute guest path: ``~``, ``~user`` and relative paths as scp reads them."""
        return acc.resolve_path(text, self.login, self.accounts)

    def owner(self, text: str | None) -> acc.GuestOwner:
        """``USER[:GROUP]`` as numbers; None means the login user and its group."""
        user, group = acc.parse_owner(text) if text is not None else (self.login, None)
        if user == "root" and group is None:
            return acc.ROOT
        table = self.accounts() if acc.needs_accounts(user, group) else None
        return acc.resolve_owner(user, group, table)
