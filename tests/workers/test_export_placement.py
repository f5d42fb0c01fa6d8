"""Where export chunks place their parts in the target file, and what the reduce writes itself: pure
logic on the staging folder and a local client space."""

from __future__ import annotations

import io
import time

import pytest

from dx.shared.connections.local import LocalRemote
from dx.workers import staging
from dx.workers.exports import placement

RUN = 7
HEAD, TAIL = b"email,name\n", b""
TEMP = "out/.people.csv.part-7"


pytestmark = pytest.mark.usefixtures("staging_dir")


def _parts(*bodies: bytes) -> list[staging.Staged]:
    """The run's local parts, written whole."""
    parts = [staging.export_part(RUN, i) for i in range(len(bodies))]
    for part, body in zip(parts, bodies, strict=True):
        part.write_bytes(body)
    return parts


def _place(remote: LocalRemote, part: staging.Staged, offset: int) -> None:
    """What a chunk does once its offset is known: write its part there, then note it."""
    with part.open("rb") as fh:
        remote.place(TEMP, [(offset, fh)])
    placement.note_placed(part, offset)


def test_a_part_goes_after_the_head_and_every_part_before_it():
    # Given parts 0 and 1 written, of 5 and 7 bytes
    _parts(b"a,1\n\n", b"bb,22\n\n")
    # When chunks 0, 1 and 2 ask where theirs go / Then after the head, and the sizes before them
    assert [placement.part_offset(RUN, i, len(HEAD)) for i in range(3)] == [11, 16, 23]


def test_a_part_after_one_not_whole_is_left_to_the_chunk_that_makes_it_whole(tmp_path):
    # Given part 0 being written (its chunk at work), part 1 whole, part 2 neither written nor begun
    remote = LocalRemote(str(tmp_path / "client"))
    part0, part1 = staging.export_part(RUN, 0), staging.export_part(RUN, 1)
    staging.being_written(part0).write_bytes(b"a,")
    part1.write_bytes(b"bb,22\n")
    # When chunks 1 and 3 ask where theirs go / Then neither waits: their offsets are not known
    started = time.monotonic()
    assert placement.part_offset(RUN, 1, len(HEAD)) is None
    assert placement.part_offset(RUN, 3, len(HEAD)) is None
    assert time.monotonic() - started < 0.1
    # When chunk 0 makes its part whole / Then it places its own and part 1, not the parts after those
    staging.being_written(part0).write_bytes(b"a,1\n")
    staging.being_written(part0).replace(part0)
    offset = placement.part_offset(RUN, 0, len(HEAD))
    assert placement.placeable(RUN, 0, offset) == [(11, part0), (15, part1)]
    for at, part in placement.placeable(RUN, 0, offset):
        _place(remote, part, at)
    # Then the reduce writes no part, and the file is whole
    assert _complete(remote, [part0, part1]) == 0
    assert (tmp_path / "client" / TEMP).read_bytes() == HEAD + b"a,1\nbb,22\n"


def test_a_chunk_places_after_its_own_only_parts_not_placed_where_they_belong(tmp_path):
    # Given three whole parts, the second placed by its own chunk, the third being written again
    remote = LocalRemote(str(tmp_path / "client"))
    parts = _parts(b"a,1\n", b"bb,22\n", b"ccc,333\n")
    _place(remote, parts[1], len(HEAD) + 4)
    staging.being_written(parts[2]).write_bytes(b"c")
    # When chunk 0 asks what it places / Then its own part only: the second is placed, the third not whole
    assert placement.placeable(RUN, 0, len(HEAD)) == [(len(HEAD), parts[0])]
    # And a note of another place counts as not placed
    placement.note_placed(parts[1], 99)
    assert placement.placeable(RUN, 0, len(HEAD)) == [(len(HEAD), parts[0]), (len(HEAD) + 4, parts[1])]


def _complete(remote: LocalRemote, parts: list[staging.Staged]) -> int:
    return placement.complete(remote, RUN, HEAD, parts, TAIL, TEMP)


def test_the_reduce_writes_only_the_head_tail_and_the_parts_no_chunk_placed(tmp_path):
    # Given three parts, the first and last placed by their chunks, the middle one not (its offset was unknown)
    remote = LocalRemote(str(tmp_path / "client"))
    parts = _parts(b"a,1\n", b"bb,22\n", b"ccc,333\n")
    _place(remote, parts[0], len(HEAD))
    _place(remote, parts[2], len(HEAD) + 4 + 6)
    # When the reduce completes the file / Then it wrote one part, and the file is whole
    assert _complete(remote, parts) == 1
    assert (tmp_path / "client" / TEMP).read_bytes() == HEAD + b"a,1\nbb,22\nccc,333\n"


def test_a_part_placed_by_a_size_that_changed_is_written_again_at_its_true_offset(tmp_path):
    # Given part 1 placed after part 0 as it was (4 bytes), then part 0 written again, longer (a retry),
    # with a stale leftover beyond the end of what the file will hold
    remote = LocalRemote(str(tmp_path / "client"))
    parts = _parts(b"a,1\n", b"bb,22\n")
    _place(remote, parts[1], len(HEAD) + 4)
    remote.place(TEMP, [(100, io.BytesIO(b"stale"))])
    parts[0].write_bytes(b"a,1111\n")
    _place(remote, parts[0], len(HEAD))
    # When the reduce completes the file / Then part 1's note does not match where it belongs: it is written
    # again, and the file is cut to its size
    assert _complete(remote, parts) == 1
    assert (tmp_path / "client" / TEMP).read_bytes() == HEAD + b"a,1111\nbb,22\n"


def test_void_notes_make_the_reduce_write_every_part(tmp_path):
    # Given both parts placed and noted, where a chunk's later run could have moved part 1's true place
    # (its write not seen by the notes: here, garbage where part 1 is)
    remote = LocalRemote(str(tmp_path / "client"))
    parts = _parts(b"a,1\n", b"bb,22\n")
    _place(remote, parts[0], len(HEAD))
    _place(remote, parts[1], len(HEAD) + 4)
    remote.place(TEMP, [(len(HEAD) + 4, io.BytesIO(b"xxxxxx"))])
    staging.placements_void(RUN).touch()
    # When the reduce completes the file / Then it wrote every part, and the file is whole
    assert _complete(remote, parts) == 2
    assert (tmp_path / "client" / TEMP).read_bytes() == HEAD + b"a,1\nbb,22\n"
