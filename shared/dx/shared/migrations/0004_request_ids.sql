-- A client's own id for a run request (AMQP message_id): a redelivered or
-- re-sent request finds the run it made instead of making a second one.
ALTER TABLE dx.runs ADD COLUMN request_id text;
CREATE UNIQUE INDEX runs_request_id_idx ON dx.runs (tenant, request_id) WHERE request_id IS NOT NULL;
