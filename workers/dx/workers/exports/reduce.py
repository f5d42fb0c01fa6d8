"""Actor ``export_reduce`` (queue ``dx.reduce``): complete the file, deliver it, end the run.

Consumes ``export_reduce(run_id)``, the completion callback of the export
plan's chunk group (or sent directly when there is no row). Checks that every
chunk's result exists (the barrier may fire early or twice), then, holding
the run's row lock: completes the file under its temporary name
(``.NAME.part-RUN`` beside the target), where the chunks placed their parts,
by writing the header, every part a chunk did not place where it belongs in
the end (``dx.workers.exports.placement``), and the footer, and cutting it to its
size; renames it to its final name, does the same for the manifest, and in the same
transaction records the delivery and what the run's kind moves on
(``dx.workers.exports.kinds``: an Exporter's watermark goes to the run's
snapshot) and ends the run. Then sends the e-mail, records the file's SHA-256
when no manifest needed it before (``record_digest``: the report does not
wait for the file to be read) and clears the staging folder.

Retries: 5 with backoff; then ``run_crashed`` fails the run. A failed upload
fails the run at once (TARGET_WRITE_FAILED): nothing is left under the final
name and the watermark stays, so the next run delivers the same events.
Idempotent: the run lock makes a twin call wait, then find the run ended.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import IO, TypeVar

import structlog

from dx.shared import db, threads
from dx.shared.catalog import ModuleDef
from dx.shared.connections import Remote, open_remote
from dx.shared.errors import RunError
from dx.shared.formats.export import file_digest, head_and_tail
from dx.shared.runs import RunStatus, chunks_done, definition, finish, get_run
from dx.workers import staging
from dx.workers.exports import placement
from dx.workers.exports.kinds import export_kind
from dx.workers.exports.plan import temp_name
from dx.workers.failures import fail_run, notify
from dx.workers.retries import retry_if_transient

log = structlog.get_logger(__name__)
T = TypeVar("T")


def export_reduce(run_id: int) -> None:
    """Deliver run ``run_id``'s file once every chunk has written its part."""
    with db.connect() as conn:
        run = get_run(conn, run_id)
        if run is None:
            return
        structlog.contextvars.bind_contextvars(tenant=run["tenant"], module=run["module"])
        if not RunStatus(run["status"]).terminal:
            done, n_chunks = chunks_done(conn, run_id), run["n_chunks"]
            if run["planned_at"] is None or n_chunks is None or done < n_chunks:
                log.info("export_reduce.waiting", chunks_done=done, n_chunks=n_chunks)
                return
        mdef = definition(conn, run)
    try:
        undigested = _deliver(run_id, mdef)
    except RunError as exc:
        retry_if_transient(exc)
        log.warning("export_reduce.failed", code=exc.code.value, error=exc.message)
        fail_run(run_id, exc.code, exc.message)
        return
    notify(run_id)
    if undigested is not None:
        record_digest(run_id, *undigested)
    staging.remove_run(run_id)


def record_digest(run_id: int, head: bytes, parts: list[staging.Staged], tail: bytes) -> None:
    """Record the SHA-256 of the file delivered without a manifest (head, the parts in order, tail)."""
    _, sha256 = file_digest(head, parts, tail)
    with db.transaction() as conn:
        conn.execute("UPDATE dx.exports SET sha256 = %s WHERE run_id = %s", (sha256, run_id))


def _deliver(run_id: int, mdef: ModuleDef) -> tuple[bytes, list[staging.Staged], bytes] | None:
    """Upload, rename and record, under the run's lock; a terminal run is left as it is. Returns the
    file's head, parts and tail when its SHA-256 is still to be recorded (no manifest needed it)."""
    target, connection, kind = mdef.module.target, mdef.connection, export_kind(mdef)
    assert target is not None and connection is not None
    with db.transaction() as conn:
        run = get_run(conn, run_id, for_update=True)
        if run is None or RunStatus(run["status"]).terminal:
            return None
        export = conn.execute("SELECT snapshot_from::text, snapshot_to::text, bounds, target_path FROM dx.exports"
                              " WHERE run_id = %s", (run_id,)).fetchone()
        assert export is not None and run["n_chunks"] is not None
        totals = conn.execute("SELECT coalesce(sum(rows_read), 0)::bigint AS n FROM dx.chunk_results"
                              " WHERE run_id = %s", (run_id,)).fetchone()
        rows = int(totals["n"]) if totals else 0
        head, tail = head_and_tail(target, kind.query(export).columns)
        local = [staging.export_part(run_id, i) for i in range(run["n_chunks"])]
        final = export["target_path"]
        size_bytes = len(head) + sum(part.stat().st_size for part in local) + len(tail)
        sha256 = None
        with open_remote(connection) as remote:
            with ThreadPoolExecutor(1, thread_name_prefix="dx-digest", initializer=threads.name_native) as pool:  # the manifest's digest, read from the local parts meanwhile
                hashed = pool.submit(file_digest, head, local, tail) if target.manifest else None
                written_here = _cleaning_up(remote, temp_name(final, run_id), lambda temp: placement.complete(
                    remote, run_id, head, local, tail, temp))
                if hashed is not None:
                    _, sha256 = hashed.result()
            manifest = None
            if target.manifest:
                manifest = {"file": posixpath.basename(final), "rows": rows, "bytes": size_bytes,
                            "sha256": sha256, "format": target.format,
                            "compression": target.compression, "encoding": target.encoding,
                            "module": mdef.module.id, "run": run_id,
                            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
                body = io.BytesIO(json.dumps(manifest, indent=2).encode() + b"\n")
                _put(remote, body, f"{final}.manifest.json", run_id)
            # Renamed while the lock is held and just before the commit: were the commit to fail,
            # the file would be delivered again by the next run, never lost. The notes of placed parts
            # describe the temporary file: they go with it (a retried reduce writes every part).
            staging.placements_void(run_id).touch()
            remote.move(temp_name(final, run_id), final)
            if manifest is not None:
                remote.move(temp_name(f"{final}.manifest.json", run_id), f"{final}.manifest.json")
        conn.execute("UPDATE dx.exports SET bytes = %s, sha256 = %s, delivered_at = now() WHERE run_id = %s",
                     (size_bytes, sha256, run_id))
        kind.delivered(conn, run_id, export)
        finish(conn, run_id, RunStatus.COMPLETED, counters={"rows_exported": rows})
    log.info("run.finished", status="completed", rows_exported=rows, path=final, bytes=size_bytes,
             parts_placed_by_chunks=len(local) - written_here, parts_written_by_reduce=written_here)
    return (head, local, tail) if sha256 is None else None


def _put(remote: Remote, stream: IO[bytes], path: str, run_id: int) -> None:
    """Upload under the temporary name; on failure try to remove what was written."""
    _cleaning_up(remote, temp_name(path, run_id), lambda temp: remote.upload(stream, temp))


def _cleaning_up(remote: Remote, temp: str, write: Callable[[str], T]) -> T:
    """What ``write`` returns; on failure try to remove what it wrote under ``temp``."""
    try:
        return write(temp)
    except RunError:
        _remove(remote, temp)
        raise


def _remove(remote: Remote, path: str) -> None:
    """Remove a hidden leftover; a connection that is gone leaves it (harmless: never matched)."""
    try:
        remote.remove(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("export.temp_left", path=path, error=str(exc))
