-- The scheduler: fire claims, the leader lease, per-module schedule state and
-- the run outbox.

-- One row per (module, due time) ever handled: the primary key is what makes
-- each due time fire once, whatever the number of scheduler replicas.
CREATE TABLE dx.fire_claims (
    module      text NOT NULL REFERENCES dx.modules(id) ON DELETE CASCADE,
    due_at      timestamptz NOT NULL,
    outcome     text NOT NULL,          -- fired | skipped | coalesced
    run_id      bigint REFERENCES dx.runs(id) ON DELETE SET NULL,
    claimed_by  text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fire_claims_once UNIQUE (module, due_at)
);

-- One row: the replica holding an unexpired lease is the leader. Expiry is
-- judged on the database's clock, so replicas need not agree on theirs.
CREATE TABLE dx.scheduler_lease (
    name        text PRIMARY KEY,
    holder      text,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz
);
INSERT INTO dx.scheduler_lease (name) VALUES ('scheduler');

-- Where each module's schedule stands: due times up to cursor_at are handled
-- (fired, skipped, coalesced, or passed while paused: never back-filled).
-- Failed runs count towards auto-pause only after failures_since.
CREATE TABLE dx.schedule_state (
    module          text PRIMARY KEY REFERENCES dx.modules(id) ON DELETE CASCADE,
    cursor_at       timestamptz NOT NULL,
    failures_since  timestamptz NOT NULL DEFAULT '-infinity',
    auto_paused_at  timestamptz
);

-- Runs created but whose plan message is not sent yet. Written in the run's
-- own transaction; deleted in the transaction that sends the message, so a
-- crash in between leaves the row for the leader's sweeper. after_run: the
-- run this one waits for (overlap: queue).
CREATE TABLE dx.run_outbox (
    run_id      bigint PRIMARY KEY REFERENCES dx.runs(id) ON DELETE CASCADE,
    after_run   bigint REFERENCES dx.runs(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE dx.runs ADD COLUMN due_at timestamptz;
CREATE INDEX runs_active_idx ON dx.runs (module) WHERE status IN ('queued', 'running');
