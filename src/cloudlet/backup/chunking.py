"""Turn what was read from a disk (extents) into a list of chunks in the store.

A backup is always a complete chunk list (a "synthetic full"): an incremental backup
starts from its parent's chunks and replaces those whose 4 MiB touch a dirty extent,
so restoring any backup needs no chain walk and pruning any backup breaks no other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cloudlet.backup.store import CHUNK_SIZE, BackupStore
from cloudlet.errors import CloudletError
from cloudlet.progress import CancelToken, check

WORKERS = 2

# (guest offset, bytes or None for zeros, length): never crossing a chunk boundary
Extent = tuple[int, bytes | None, int]


@dataclass
class ChunkResult:
    chunks: list[str | None]
    new_chunks: set[str]
    new_bytes: int
    read_bytes: int


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return (size + chunk_size - 1) // chunk_size


def build_chunks(
    store: BackupStore,
    extents: Iterable[Extent],
    size: int,
    base: list[str | None] | None,
    *,
    backup: str,
    chunk_size: int = CHUNK_SIZE,
    created: set[str] | None = None,
    cancel: CancelToken | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChunkResult:
    """Store the chunks of a disk of ``size`` bytes.

    ``base`` None: the extents are all the disk holds (what they do not cover is zero).
    Otherwise they are what changed since the backup whose chunk list ``base`` is.
    ``created`` collects the chunks new to the store as they are written (to undo them).
    ``cancel`` is checked before each extent: Cancelled comes once the chunks in flight
    are written, and ``created`` then names every one of them, so the caller can undo.
    ``progress`` hears how many bytes of the disk are behind each chunk as it is handed on.
    """
    count = chunk_count(size, chunk_size)
    if base is not None and len(base) != count:
        raise CloudletError("the parent backup has another disk size; read the whole disk")
    chunks: list[str | None] = list(base) if base is not None else [None] * count
    result = ChunkResult(chunks, created if created is not None else set(), 0, 0)
    zeros = bytes(chunk_size)
    index: int | None = None
    buf = bytearray()
    # Hashing and writing run in threads (both release the GIL) while the next chunk
    # is read; a few chunks in flight at most.
    pending: deque[tuple[int, int, Future[tuple[str, bool]]]] = deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            where, length, future = pending.popleft()
            digest, new = future.result()
            chunks[where] = digest
            if new:
                result.new_chunks.add(digest)
                result.new_bytes += length

    def flush(pool: ThreadPoolExecutor) -> None:
        if index is None:
            return
        if progress is not None:
            progress(min(size, (index + 1) * chunk_size))
        if buf == zeros[: len(buf)]:
            chunks[index] = None
            return
        pending.append((index, len(buf), pool.submit(store.put, bytes(buf))))
        settle(WORKERS * 2)

    with ThreadPoolExecutor(WORKERS) as pool:
        try:
            for offset, data, length in extents:
                check(cancel)
                here = offset // chunk_size
                if here >= count or (offset + length - 1) // chunk_size != here:
                    raise ValueError(f"extent {offset}+{length} is not inside one chunk")
                if data is None and base is None:
                    continue  # zeros on a full read: already zero
                if here != index:
                    flush(pool)
                    index = here
                    chunk_len = min(chunk_size, size - here * chunk_size)
                    previous = chunks[here] if base is not None else None
                    buf = (
                        bytearray(store.get(previous, backup=backup))
                        if previous
                        else bytearray(chunk_len)
                    )
                rel = offset - here * chunk_size
                buf[rel : rel + length] = data if data is not None else bytes(length)
                result.read_bytes += length if data is not None else 0
            flush(pool)
            settle(0)
            if progress is not None:
                progress(size)
        except BaseException:
            # Every chunk written must be known to the caller, so it can be undone.
            for _, _, future in pending:
                try:
                    digest, new = future.result()
                except Exception:
                    continue
                if new:
                    result.new_chunks.add(digest)
            raise
    return result
