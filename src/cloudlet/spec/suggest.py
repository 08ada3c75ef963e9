"""'Did you mean': the known names closest to a mistyped one, for an error's hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, known: Iterable[str], *, limit: int = 3) -> list[str]:
    """Names that start with ``word``, then the most similar ones (difflib), in ``known``'s
    order for the first kind; at most ``limit``, never ``word`` itself."""
    names = [n for n in dict.fromkeys(known) if n != word]
    prefixed = [n for n in names if word and n.startswith(word)]
    similar = difflib.get_close_matches(word, names, n=limit, cutoff=0.6)
    return list(dict.fromkeys([*prefixed, *similar]))[:limit]


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """ "did you mean 'a' or 'b'?", or None when nothing is close."""
    found = closest(word, known)
    if not found:
        return None
    return f"did you mean {' or '.join(repr(n) for n in found)}?"
