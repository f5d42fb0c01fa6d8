"""Where an export's parts go in the target file, and what the reduce writes itself.

Each export chunk writes its part into the target's temporary file at its
offset (``part_offset``: the head's length plus the sizes of the parts before
it, read from the staging folder) and notes where it put it
(``note_placed``). A chunk whose parts before it are not all whole does not
wait: the chunk that makes them whole places its part too (``placeable``).
The reduce writes the head, the tail and every part whose note does not
match where it belongs in the end (``complete``); it writes every part when
the notes are void (``staging.placements_void``). Not an actor module: the
chunk and the reduce share it, and tests import it.
"""

from __future__ import annotations

import io
from contextlib import ExitStack
from typing import IO

from dx.shared.connections import Remote
from dx.workers import staging


def part_offset(run_id: int, chunk_no: int, start: int) -> int | None:
    """Where chunk ``chunk_no``'s part begins in the file: ``start`` (the head's length) plus the sizes of
    the parts before it. None when one of them is not whole yet (being written, or not begun: its chunk
    may be queued behind this one): the chunk does not wait, the chunk that makes the parts before it
    whole places this one too (``placeable``), else the reduce."""
    offset = start
    for before in range(chunk_no):
        part = staging.export_part(run_id, before)
        if not _whole(part):
            return None
        offset += part.stat().st_size
    return offset


def placeable(run_id: int, chunk_no: int, offset: int) -> list[tuple[int, staging.Staged]]:
    """What chunk ``chunk_no`` places, its part beginning at ``offset``: its part, then each whole part
    after it, in order, up to one being written or not begun (their chunks found a part before theirs
    not whole, and left theirs to this one), less those already placed where they belong. A chunk
    renames its part before it looks at the parts before it, and the chunk before it renames its own
    before it looks at the parts after: one of the two always sees the other's part whole."""
    out, number = [], chunk_no
    while _whole(part := staging.export_part(run_id, number)):
        size = part.stat().st_size
        if number == chunk_no or placed_at(part) != (offset, size):
            out.append((offset, part))
        offset, number = offset + size, number + 1
    return out


def _whole(part: staging.Staged) -> bool:
    """Whether ``part`` is written whole (not being written again by a retried chunk)."""
    return part.exists() and not staging.being_written(part).exists()


def note_placed(part: staging.Staged, offset: int) -> None:
    """Note that ``part`` was written whole into the target file at ``offset``."""
    staging.placed_marker(part).write_text(f"{offset} {part.stat().st_size}\n")


def placed_at(part: staging.Staged) -> tuple[int, int] | None:
    """(offset, size) at which ``part``, as it is now, was written into the target file; None if it was not
    (a chunk deletes its note before it writes its part again)."""
    try:
        offset, size = staging.placed_marker(part).read_text().split()
        return int(offset), int(size)
    except (FileNotFoundError, ValueError):
        return None


def complete(remote: Remote, run_id: int, head: bytes, local: list[staging.Staged], tail: bytes, temp: str) -> int:
    """Write into ``temp`` what the chunks did not place there: the head, each part whose note does not
    match where and how large it is in the end, and the tail; cut the file to its size. Every part is
    written when the notes are void. Returns the number of parts written here."""
    trusted = not staging.placements_void(run_id).exists()
    offset, missing = len(head), []
    for part in local:
        size = part.stat().st_size
        if not (trusted and placed_at(part) == (offset, size)):
            missing.append((offset, part))
        offset += size
    with ExitStack() as files:
        pieces: list[tuple[int, IO[bytes]]] = [
            (0, io.BytesIO(head)), *((at, files.enter_context(part.open("rb"))) for at, part in missing),
            (offset, io.BytesIO(tail))]
        remote.place(temp, pieces, size=offset + len(tail))
    return len(missing)
