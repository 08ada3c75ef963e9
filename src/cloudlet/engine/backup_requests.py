"""What a frontend asks of backups, decided once for every frontend.

A policy change arrives as words ("1h", "off", keep counts), a restore names a backup or
asks for the latest, a verify run reports problems: turning those into a policy, a backup
id and an error is policy, so it lives here and not in the CLI (the REST API asks the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudlet.errors import BackupsCorrupt, InvalidInput
from cloudlet.spec.units import parse_duration

if TYPE_CHECKING:
    from cloudlet.engine.backup_views import VerifyReport

MIN_INTERVAL = 60
MAX_KEEP = 10_000
OFF = ("off", "none", "0")
KEEP_RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")


@dataclass(frozen=True)
class PolicyUpdate:
    """A change to a VM's backup policy; None leaves a field as it is.

    ``every`` is a duration ("1h", "1d") or one of ``OFF`` to stop scheduled backups.
    """

    every: str | None = None
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None

    def changes(self) -> dict[str, Any]:
        """The policy fields this update sets, checked; empty when it sets none."""
        changes: dict[str, Any] = {}
        for rule in KEEP_RULES:
            count = getattr(self, rule)
            if count is None:
                continue
            if not 0 <= count <= MAX_KEEP:
                raise InvalidInput(
                    f"{rule.replace('_', ' ')} must be 0 to {MAX_KEEP}, not {count}",
                    hint="give a count of backups to keep",
                )
            changes[rule] = count
        if self.every is not None:
            if self.every.strip().lower() in OFF:
                changes.update(every=None, schedule="none")
            else:
                seconds = parse_duration(self.every, what="backup interval")
                if seconds < MIN_INTERVAL:
                    raise InvalidInput(
                        "backups can run at most once a minute", hint="use 1m or more"
                    )
                changes["every"] = seconds
        return changes


def chosen_backup(*, latest: bool, backup_id: str | None) -> str | None:
    """The backup a restore means: its id, or None for the newest good one. Exactly one
    of the two must be asked for: a restore never guesses."""
    if latest == (backup_id is not None):
        raise InvalidInput("say which backup", hint="name one backup, or ask for the latest")
    return backup_id


def check_verified(report: VerifyReport) -> VerifyReport:
    """The report of a verify run that found nothing wrong; BackupsCorrupt otherwise."""
    if report.problems:
        raise BackupsCorrupt(
            f"{len(report.problems)} problem(s) in the backups of {report.vm}",
            hint="restore another backup; the next backup stores the data again",
        )
    return report
