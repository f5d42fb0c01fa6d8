"""The staging store: per-run folders of chunk files every worker reaches.

Layout: ``<DX_STAGING_DIR>/runs/<run>/source/`` (a downloaded source, removed
after planning) and ``.../chunk-<n>/part-<batch>.arrow`` (Arrow IPC); an
export's chunks write ``.../export/part-<n>`` (file bytes, joined in order).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from dx.shared.settings import get_settings


def run_dir(run_id: int) -> Path:
    """The run's staging folder."""
    return get_settings().staging_dir / "runs" / str(run_id)


def chunk_dir(run_id: int, chunk_no: int) -> Path:
    """The folder of one chunk's part files."""
    return run_dir(run_id) / f"chunk-{chunk_no:04d}"


def write_part(run_id: int, chunk_no: int, batch_no: int, frame: pl.DataFrame) -> None:
    """Write one batch's slice of a chunk; rewriting it on a retried plan is harmless."""
    folder = chunk_dir(run_id, chunk_no)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".part-{batch_no:06d}.arrow.tmp"
    frame.write_ipc(tmp)
    tmp.replace(folder / f"part-{batch_no:06d}.arrow")


def read_chunk(run_id: int, chunk_no: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """All parts of a chunk, in source order; empty with ``schema`` if none."""
    parts = sorted(chunk_dir(run_id, chunk_no).glob("part-*.arrow"))
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat([pl.read_ipc(p) for p in parts])


def remove_chunks(run_id: int) -> None:
    """Delete every chunk folder of the run (before a retried plan rewrites them)."""
    for folder in run_dir(run_id).glob("chunk-*"):
        shutil.rmtree(folder, ignore_errors=True)


def remove_run(run_id: int) -> None:
    """Delete the run's staging folder (after the run ended)."""
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def export_part(run_id: int, chunk_no: int) -> Path:
    """Where an export chunk writes its piece of the file (the folder is created)."""
    folder = run_dir(run_id) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"part-{chunk_no:04d}"
