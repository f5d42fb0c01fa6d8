-- The platform's feedback events, and the Exporter's watermarks.
--
-- Events live in one platform table keyed by tenant and contact database;
-- every query of DataExchange filters on both (tenants never see each other's
-- events). ``xact_id`` is the id of the transaction that inserted the event:
-- the Exporter's watermark is a snapshot, and an event belongs to the first
-- export whose snapshot sees that transaction committed (see
-- dx/workers/export_query.py). It is filled by its default; never give it.

CREATE SCHEMA IF NOT EXISTS platform;

CREATE TABLE platform.events (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    database     text NOT NULL,
    delivery_id  bigint NOT NULL,
    campaign_id  bigint NOT NULL,
    contact_key  text NOT NULL,
    type         text NOT NULL CHECK (type IN ('sent', 'delivered', 'open', 'click', 'bounce_hard',
                                               'bounce_soft', 'unsubscribe', 'complaint')),
    occurred_at  timestamptz NOT NULL,
    detail       text,
    xact_id      xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX events_xact_idx ON platform.events (tenant, database, xact_id);
CREATE INDEX events_delivery_idx ON platform.events (tenant, database, delivery_id);

-- One row per run of a Displacer or Exporter: what it exports, where to, and
-- (Exporter) the snapshot window of its events. Written by the plan, read by
-- every chunk and the reduce, so that a redelivered message exports the same.
CREATE TABLE dx.exports (
    run_id         bigint PRIMARY KEY REFERENCES dx.runs(id) ON DELETE CASCADE,
    module         text NOT NULL REFERENCES dx.modules(id) ON DELETE CASCADE,
    snapshot_from  pg_snapshot,
    snapshot_to    pg_snapshot,
    bounds         text[] NOT NULL DEFAULT '{}',
    target_path    text NOT NULL,
    bytes          bigint,
    sha256         text,
    delivered_at   timestamptz
);
CREATE INDEX exports_module_idx ON dx.exports (module, run_id DESC);

-- The Exporter's watermark: the snapshot of its last delivered export. It
-- moves only in the transaction that records the delivery.
CREATE TABLE dx.export_watermarks (
    module    text PRIMARY KEY REFERENCES dx.modules(id) ON DELETE CASCADE,
    snapshot  pg_snapshot NOT NULL,
    run_id    bigint NOT NULL,
    moved_at  timestamptz NOT NULL DEFAULT now()
);
