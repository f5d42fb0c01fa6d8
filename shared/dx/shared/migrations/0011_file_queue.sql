-- A file source's queue of files. rejected_path: where a run that failed on its file's content
-- moved that file (under the source's rejected_dir), chosen before the move so that a redelivery
-- finishes it. follows_run: the run of a `files: all` module whose end made this one, for the next
-- pending file; unique, so that the end of a run makes its next run once.
ALTER TABLE dx.runs ADD COLUMN rejected_path text;
ALTER TABLE dx.runs ADD COLUMN follows_run bigint REFERENCES dx.runs(id) ON DELETE SET NULL;
CREATE UNIQUE INDEX runs_follows_run_idx ON dx.runs (follows_run) WHERE follows_run IS NOT NULL;
