"""'Did you mean': the known names closest to a mistyped one, for an error's hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's own default: below it, two names have little in common


def closest(word: str, known: Iterable[str], *, limit: int = 3) -> list[str]:
    """Names that start with ``word`` (in ``known``'s order), then the clear favourites
    by likeness; at most ``limit``, never ``word`` itself."""
    names = [n for n in dict.fromkeys(known) if n != word]
    prefixed = [n for n in names if word and n.startswith(word)]
    scored = sorted(((_likeness(word, n), n) for n in names), key=lambda pair: -pair[0])
    best = scored[0][0] if scored else 0.0
    # "gp.smal" is gp.small, not also cpu.small: only those near the best one
    similar = [n for score, n in scored if score >= max(CUTOFF, best - 0.1)]
    return list(dict.fromkeys([*prefixed, *similar]))[:limit]


def _likeness(word: str, name: str) -> float:
    """How alike two names are (0..1); a slip in the first part of a longer name
    ("debain-12" for debian-12-genericcloud) counts a little less than a whole match."""
    whole = difflib.SequenceMatcher(None, word, name).ratio()
    if len(name) <= len(word):
        return whole
    head = difflib.SequenceMatcher(None, word, name[: len(word)]).ratio()
    return max(whole, 0.95 * head)


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """ "did you mean 'a' or 'b'?", or None when nothing is close."""
    found = closest(word, known)
    if not found:
        return None
    return f"did you mean {' or '.join(repr(n) for n in found)}?"
