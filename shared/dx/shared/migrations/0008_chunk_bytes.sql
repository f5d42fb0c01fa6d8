-- A streamed append's chunks apply to the contact table as they commit, so a retried plan must cut
-- the same chunks as the attempt before it: the size it cuts them at is fixed by the run's first
-- attempt (a config applied meanwhile does not change it).
ALTER TABLE dx.runs ADD COLUMN chunk_bytes integer;
