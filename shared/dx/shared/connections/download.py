"""A download that is read while it is still being written.

``remote.fetch`` runs in a thread; ``Download.open()`` gives a reader of the
local copy that waits for bytes not written yet, so that parsing starts with
the first block instead of after the last (the SFTP transfer and the CSV
parser then share the plan's time). The reader ends where the finished
download ends and raises the download's error if it failed.
"""

from __future__ import annotations

import io
import posixpath
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dx.shared import threads
from dx.shared.connections import Remote

#: How long the reader waits before looking again for bytes not written yet.
POLL_S = 0.005
#: Read buffer of the reader.
BUFFER_BYTES = 1024 * 1024


class Download:
    """``remote.fetch(path, staging)`` in a thread of its own."""

    def __init__(self, remote: Remote, path: str, staging: Path) -> None:
        # where an SFTP fetch writes; a local remote returns the file itself, once done
        self.growing = staging / posixpath.basename(path)
        self.growing.unlink(missing_ok=True)  # a retried plan must not read an old copy
        self.done = threading.Event()
        self.seconds = 0.0
        self._local: Path | None = None
        self._error: BaseException | None = None
        self._thread = threads.Thread(self._run, "dx-fetch", (remote, path, staging))
        self._thread.start()

    def _run(self, remote: Remote, path: str, staging: Path) -> None:
        started = time.monotonic()
        try:
            self._local = remote.fetch(path, staging)
        except BaseException as exc:  # handed to the reader and to wait()
            self._error = exc
        finally:
            self.seconds = time.monotonic() - started
            self.done.set()

    def wait(self) -> Path:
        """The local copy, once complete; the download's error if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._local is not None
        return self._local

    def open(self) -> IO[bytes]:
        """A reader of the local copy, from its first byte, waiting for the rest as it arrives."""
        return io.BufferedReader(_Growing(self), BUFFER_BYTES)

    def opener(self, _path: Path) -> IO[bytes]:
        """``open`` as a source reader's opener (the path is ``growing``)."""
        return self.open()


class _Growing(io.RawIOBase):
    """Reads a file another thread is still writing."""

    def __init__(self, download: Download) -> None:
        super().__init__()
        self.download = download
        self.fh: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _file(self) -> IO[bytes]:
        while self.fh is None:
            if self.download.done.is_set():
                self.fh = open(self.download.wait(), "rb")
            elif self.download.growing.exists():
                self.fh = open(self.download.growing, "rb")
            else:
                self.download.done.wait(POLL_S)
        return self.fh

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        fh = self._file()
        while True:
            was_done = self.download.done.is_set()
            n = fh.readinto(buffer)  # type: ignore[attr-defined]
            if n or was_done:  # after the download ended, no byte means the end
                if not n:
                    self.download.wait()
                return int(n or 0)
            self.download.done.wait(POLL_S)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:  # the end is known once the download is complete (zip archives)
            self.download.wait()
        return self._file().seek(offset, whence)

    def tell(self) -> int:
        return self._file().tell()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        super().close()


@contextmanager
def downloading(remote: Remote, path: str, staging: Path) -> Iterator[Download]:
    """Start the download; at the end of the block wait for it (its error first, it caused any other)."""
    download = Download(remote, path, staging)
    try:
        yield download
    except BaseException:
        download.done.wait()
        download.wait()  # raises the download's own error, if any
        raise
    download.wait()
