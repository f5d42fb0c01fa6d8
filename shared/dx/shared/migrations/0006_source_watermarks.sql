-- Incremental reads of a client's PostgreSQL: the highest watermark value that
-- a completed run delivered, per module, and what it was measured on (basis:
-- connection, table or query, column; another basis starts from scratch).
CREATE TABLE dx.source_watermarks (
    module      text PRIMARY KEY REFERENCES dx.modules(id) ON DELETE CASCADE,
    basis       text NOT NULL,
    value       text NOT NULL,
    run_id      bigint REFERENCES dx.runs(id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The watermark a run read up to; the module's becomes it when the run completes.
ALTER TABLE dx.runs ADD COLUMN source_watermark text;
