"""Where an export's parts go in the target file, and what the reduce writes itself.

Each export chunk writes its part into the target's temporary file at its
offset (``part_offset``: the head's length plus the sizes of the parts before
it, read from the staging folder) and notes where it put it
(``note_placed``). The reduce writes the head, the tail and every part whose
note does not match where it belongs in the end (``complete``); it writes
every part when the notes are void (``staging.placements_void``). Not an
actor module: the chunk and the reduce share it, and tests import it.
"""

from __future__ import annotations

import io
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from dx.shared.connections import Remote
from dx.workers import staging

#: How long a chunk waits for the chunks before it, being written, to learn where its part goes in the file.
PLACE_WAIT_S = 60.0
#: How often it looks.
PLACE_POLL_S = 0.02


def part_offset(run_id: int, chunk_no: int, start: int) -> int | None:
    """Where chunk ``chunk_no``'s part begins in the file: ``start`` (the head's length) plus the sizes of
    the parts before it, waiting (at most PLACE_WAIT_S) while one of them is being written. None when one
    is not begun (its chunk is queued behind this one, or failed): the reduce writes this part then."""
    deadline = time.monotonic() + PLACE_WAIT_S
    offset = start
    for before in range(chunk_no):
        part = staging.export_part(run_id, before)
        while staging.being_written(part).exists():
            if time.monotonic() > deadline:
                return None
            time.sleep(PLACE_POLL_S)
        if not part.exists():
            return None
        offset += part.stat().st_size
    return offset


def note_placed(part: Path, offset: int) -> None:
    """Note that ``part`` was written whole into the target file at ``offset``."""
    staging.placed_marker(part).write_text(f"{offset} {part.stat().st_size}\n")


def placed_at(part: Path) -> tuple[int, int] | None:
    """(offset, size) at which ``part``, as it is now, was written into the target file; None if it was not
    (a chunk deletes its note before it writes its part again)."""
    try:
        offset, size = staging.placed_marker(part).read_text().split()
        return int(offset), int(size)
    except (FileNotFoundError, ValueError):
        return None


def complete(remote: Remote, run_id: int, head: bytes, local: list[Path], tail: bytes, temp: str) -> int:
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
            (0, io.BytesIO(head)), *((at, files.enter_context(open(part, "rb"))) for at, part in missing),
            (offset, io.BytesIO(tail))]
        remote.place(temp, pieces, size=offset + len(tail))
    return len(missing)
