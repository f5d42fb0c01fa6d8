"""The ``local`` connection: a folder on this machine (embedded default, tests)."""

from __future__ import annotations

import os
from pathlib import Path

from dx.shared.connections import FileInfo, confine, match_names, split_pattern
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

    def move(self, path: str, new_path: str) -> None:
        target = confine(self.root, new_path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        folder = self._full(os.path.relpath(os.path.dirname(target), self.root))  # no link out of the root
        os.replace(self._full(path), os.path.join(folder, os.path.basename(target)))

    def remove(self, path: str) -> None:
        os.remove(self._full(path))
