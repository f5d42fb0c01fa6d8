"""A download read while it is written: every byte in order, the download's error never swallowed."""

from __future__ import annotations

import errno
import gzip
import io
import threading
import zipfile
from pathlib import Path

import pytest

from dx.shared.connections import FileInfo
from dx.shared.connections.download import downloading
from dx.shared.connections.local import LocalRemote
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats.csv import iter_batches, read_header

pytestmark = pytest.mark.timeout(30)


class SlowRemote:
    """Writes the file to staging in pieces, each only when the test lets it (as an SFTP fetch would)."""

    def __init__(self, data: bytes, pieces: int, fail_after: int | None = None) -> None:
        self.data, self.pieces, self.fail_after = data, pieces, fail_after
        self.next_piece = threading.Semaphore(0)

    def fetch(self, path: str, staging: Path) -> Path:
        local = staging / Path(path).name
        step = -(-len(self.data) // self.pieces)
        with open(local, "wb") as out:
            for i in range(self.pieces):
                self.next_piece.acquire()
                if self.fail_after is not None and i == self.fail_after:
                    raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{path!r} could not be downloaded: link lost")
                out.write(self.data[i * step:(i + 1) * step])
                out.flush()
        return local

    def release_all(self) -> None:
        for _ in range(self.pieces):
            self.next_piece.release()

    def list(self, pattern: str) -> list[FileInfo]: ...
    def stat(self, path: str) -> FileInfo | None: ...
    def move(self, path: str, new_path: str) -> None: ...
    def remove(self, path: str) -> None: ...


def test_the_reader_gets_bytes_before_the_download_ends_and_all_of_them_in_order(tmp_path):
    # Given a download of 3 pieces of which only the first has arrived
    data = bytes(range(256)) * 400
    remote = SlowRemote(data, pieces=3)
    with downloading(remote, "in/big.bin", tmp_path) as download:
        remote.next_piece.release()
        reader = download.open()
        # When the reader reads / Then it gets the first piece while the download still runs
        first = reader.read(1000)
        assert first == data[:1000] and not download.done.is_set()
        # When the rest arrives / Then the reader ends exactly at the file's end
        remote.release_all()
        rest = reader.read()
        reader.close()
    assert first + rest == data


def test_a_failed_download_raises_its_error_in_the_reader_and_at_the_end(tmp_path):
    # Given a download that loses the link after its first piece
    remote = SlowRemote(b"email\n" + b"a@b.example\n" * 1000, pieces=4, fail_after=1)
    with pytest.raises(RunError) as info, downloading(remote, "in/c.csv", tmp_path) as download:
        remote.release_all()
        # When the whole file is read / Then the download's error comes, not a shorter file
        with download.open() as reader:
            reader.read()
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE


def test_the_parser_reads_gzip_and_zip_sources_while_they_download(tmp_path, make_source):
    # Given a gzip and a zip source arriving in 5 pieces
    text = "email,points\n" + "".join(f"u{i}@x.example,{i}\n" for i in range(5000))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("contacts.csv", text)
    for name, data in (("c.csv.gz", gzip.compress(text.encode())), ("c.zip", zipped.getvalue())):
        remote = SlowRemote(data, pieces=5)
        src = make_source(path=f"in/{name}")
        with downloading(remote, src.path, tmp_path) as download:
            remote.release_all()
            # When it is parsed through the download's reader
            opener = lambda _: download.open()  # noqa: E731
            columns = read_header(download.growing, src, opener)
            tables = [t for t, _ in iter_batches(download.growing, src, columns, opener)]
        # Then every record is there, numbered
        assert columns == ["email", "points"]
        assert sum(t.num_rows for t in tables) == 5000
        assert tables[-1]["points"][-1].as_py() == "4999"


def test_a_local_remote_is_read_in_place(tmp_path):
    # Given a local connection whose fetch returns the file itself, not a copy in staging
    (tmp_path / "root" / "in").mkdir(parents=True)
    (tmp_path / "root" / "in" / "c.csv").write_bytes(b"email\nx@y.example\n")
    (tmp_path / "staging").mkdir()
    # When it is read through a download / Then the reader gets the file, and staging holds no copy
    with downloading(LocalRemote(str(tmp_path / "root")), "in/c.csv", tmp_path / "staging") as download:
        with download.open() as reader:
            assert reader.read() == b"email\nx@y.example\n"
    assert download.wait() == tmp_path / "root" / "in" / "c.csv"
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize(("error", "code"), [
    (PermissionError(errno.EACCES, "Permission denied"), ErrorCode.SOURCE_UNREADABLE),
    (OSError("Socket is closed"), ErrorCode.TRANSFER_FAILED),
    (OSError(errno.ECONNRESET, "Connection reset by peer"), ErrorCode.TRANSFER_FAILED),
])
def test_a_refused_file_blames_the_file_and_a_broken_transfer_the_transfer(error, code):
    # Given an SFTP error while reading a file / When told / Then a refusal rejects it, a transfer is tried again
    from dx.shared.connections.sftp import _failed
    from dx.shared.errors import TRANSIENT_CODES

    told = _failed("'in/a.csv' could not be downloaded", error)
    assert told.code is code
    assert (told.code in TRANSIENT_CODES) is (code is ErrorCode.TRANSFER_FAILED)
    assert "Socket is closed" not in told.message  # the server's own text is never copied
