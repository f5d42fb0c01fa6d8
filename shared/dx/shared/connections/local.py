"""The ``local`` connection: a folder on this machine (embedded default, tests)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from dx.shared.connections import UPLOAD_BLOCK_BYTES, FileInfo, confine, match_names, split_pattern
from dx.shared.errors import ErrorCode, RunError


class LocalRemote:
    """A client space that is a local folder; symlinks may not leave the root."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _full(self, path: str) -> str:
        full = confine(self.root, path)
        real = os.path.realpath(full)
        confine(self.root, os.path.relpath(real, self.root))
        return real

    def _info(self, path: str, full: str) -> FileInfo:
        st = os.stat(full)
        return FileInfo(path, st.st_size, int(st.st_mtime))

    def list(self, pattern: str) -> list[FileInfo]:
        folder, name = split_pattern(pattern)
        full = self._full(folder)
        try:
            names = [n for n in os.listdir(full) if os.path.isfile(os.path.join(full, n))]
        except FileNotFoundError:
            return []
        return [self._info(os.path.join(folder, n), real) for n in match_names(names, name)
                if (real := self._inside(os.path.join(folder, n))) is not None]

    def _inside(self, path: str) -> str | None:
        """The real path of an entry, or None if a link takes it out of the root."""
        try:
            return self._full(path)
        except RunError:
            return None

    def stat(self, path: str) -> FileInfo | None:
        full = self._full(path)
        return self._info(path, full) if os.path.isfile(full) else None

    def fetch(self, path: str, staging: Path) -> Path:
        """The file itself: a local source needs no copy."""
        full = self._full(path)
        if not os.path.isfile(full):
            raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"{path!r} does not exist under {self.root!r}")
        return Path(full)

    def _target(self, path: str) -> str:
        """The real path a new file gets, its folder created; no link may lead out of the root."""
        target = confine(self.root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        folder = self._full(os.path.relpath(os.path.dirname(target), self.root))
        return os.path.join(folder, os.path.basename(target))

    def move(self, path: str, new_path: str) -> None:
        os.replace(self._full(path), self._target(new_path))

    def upload(self, source: IO[bytes], path: str) -> None:
        self._write(path, lambda fh: shutil.copyfileobj(source, fh, UPLOAD_BLOCK_BYTES))

    def place(self, path: str, pieces: Sequence[tuple[int, IO[bytes]]], size: int | None = None) -> None:
        def write(fh: IO[bytes]) -> None:
            for offset, source in pieces:
                fh.seek(offset)
                shutil.copyfileobj(source, fh, UPLOAD_BLOCK_BYTES)
            if size is not None:
                fh.truncate(size)

        self._write(path, write, os.O_WRONLY | os.O_CREAT)

    def _write(self, path: str, write: Callable[[IO[bytes]], object],
               flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
        """Write ``path`` (opened with ``flags``; a link there is refused) with what ``write`` writes, durable
        before it is renamed to its final name."""
        target = self._target(path)
        try:
            with open(os.open(target, flags | os.O_NOFOLLOW, 0o644), "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise RunError(ErrorCode.TARGET_WRITE_FAILED, f"{path!r} could not be written: {exc}") from None

    def remove(self, path: str) -> None:
        os.remove(self._full(path))
