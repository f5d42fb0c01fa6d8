-- An overwrite's plan sends each chunk as soon as it has written it, before it
-- has read the whole source; a retried plan starts a new attempt, and a chunk
-- message of an earlier attempt (still queued, or in a worker) then applies nothing.
ALTER TABLE dx.runs ADD COLUMN plan_attempt integer NOT NULL DEFAULT 0;
