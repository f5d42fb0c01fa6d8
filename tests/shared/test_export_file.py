"""The frame of export files: header, XML root, gzip members, and the whole file's digest."""

from __future__ import annotations

import gzip
import hashlib

from dx.shared.config import TargetCfg
from dx.shared.formats.export import READ_BYTES, file_digest, head_and_tail


def target(**overrides) -> TargetCfg:
    return TargetCfg(**{"connection": "c", "path": "out/x.csv", **overrides})


def test_a_csv_header_uses_the_delimiter_and_the_encoding():
    # Given a Latin-1 target with ";" / When framed / Then the header is one encoded line, no tail
    head, tail = head_and_tail(target(delimiter=";", encoding="latin-1"), ["email", "città"])
    assert (head, tail) == ("email;città\n".encode("latin-1"), b"")


def test_without_header_a_csv_has_no_frame():
    assert head_and_tail(target(header=False), ["email"]) == (b"", b"")


def test_an_xml_file_declares_its_encoding_and_has_one_root():
    # Given an XML target in Windows-1252 / When framed / Then the declaration names it, the root wraps the rows
    head, tail = head_and_tail(target(format="xml", encoding="windows-1252"), ["email"])
    assert head == b'<?xml version="1.0" encoding="windows-1252"?>\n<dataroot>\n'
    assert tail == b"</dataroot>\n"


def test_gzip_parts_joined_in_order_are_one_gzip_file_of_the_digest_given(tmp_path):
    # Given a gzip target, its framed header and two gzip parts written separately, one longer than a read
    head, tail = head_and_tail(target(compression="gzip"), ["a", "b"])
    bodies = [b'"1","x"\n', b"".join(b'"%d",\n' % i for i in range(2, 300_000))]
    parts = []
    for i, rows in enumerate(bodies):
        path = tmp_path / f"part-{i}"
        path.write_bytes(gzip.compress(rows, compresslevel=0))
        parts.append(path)
    assert parts[1].stat().st_size > READ_BYTES
    # When joined in order, as the chunks place them
    data = head + b"".join(p.read_bytes() for p in parts) + tail
    # Then it decompresses to header and rows in order, and the size and digest are of those bytes
    assert gzip.decompress(data) == b"a,b\n" + b"".join(bodies)
    assert file_digest(head, parts, tail) == (len(data), hashlib.sha256(data).hexdigest())
