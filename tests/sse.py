"""A small server-sent events reader for the API's tests: frames parsed, with a deadline."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Frame:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comment: str | None = None


def frames(lines: Iterator[str]) -> Iterator[Frame]:
    """Frames as the SSE format cuts them (blank line ends one; ':' starts a comment)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            yield Frame(None, None, None, comment=line[1:].strip())
        elif line == "":
            if "data" in fields:
                ident = fields.get("id")
                yield Frame(
                    int(ident) if ident else None, fields.get("event"), json.loads(fields["data"])
                )
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


_READERS: weakref.WeakKeyDictionary[httpx.Response, Iterator[Frame]] = weakref.WeakKeyDictionary()


def read_until(
    response: httpx.Response,
    done: Callable[[list[Frame]], bool],
    timeout: float = 10.0,
    *,
    comments: bool = False,
) -> list[Frame]:
    """Frames (events, and comments when asked) until ``done`` says so or time is up."""
    got: list[Frame] = []
    deadline = time.monotonic() + timeout
    reader = _READERS.get(response)
    if reader is None:
        reader = _READERS[response] = frames(response.iter_lines())
    for frame in reader:
        if frame.comment is None or comments:
            got.append(frame)
        if done(got):
            return got
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"the stream ended or timed out after {got}")
