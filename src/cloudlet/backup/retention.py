"""Which backups a retention policy keeps (pure: times in, ids out)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from cloudlet.spec.instance import Retention

_PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


def keep_set(backups: Sequence[tuple[str, datetime]], rules: Retention) -> set[str]:
    """The ids to keep: the newest ``last``, then the newest backup of each of the newest
    ``hourly`` hours (``daily`` days, ...) that have one. No rule keeps everything."""
    if not rules.any():
        return {b for b, _ in backups}
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    keep = {b for b, _ in newest_first[: rules.last]}
    for name, period in _PERIODS.items():
        wanted: int = getattr(rules, name)
        seen: set[tuple[int, ...]] = set()
        for backup_id, at in newest_first:
            if len(seen) >= wanted:
                break
            key = period(at)
            if key not in seen:
                seen.add(key)
                keep.add(backup_id)
    return keep
