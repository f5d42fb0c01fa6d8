-- How a run ends when a message is lost (dx.scheduler.watchdog). redrives: how often the
-- scheduler sent a stalled run's missing stage again; redriven_at: when it last acted on the run
-- (a re-drive, or the message that times the run out).
ALTER TABLE dx.runs ADD COLUMN redrives integer NOT NULL DEFAULT 0;
ALTER TABLE dx.runs ADD COLUMN redriven_at timestamptz;
-- When a worker last held a message of the run (processing it, or holding a retry until its
-- time). No foreign key: a beat must not wait for the run's row lock (a reduce holds it).
CREATE TABLE dx.run_beats (
    run_id  bigint PRIMARY KEY,
    beat_at timestamptz NOT NULL
);
