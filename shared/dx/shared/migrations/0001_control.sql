-- Control schema: tenants, connections, databases, modules, runs, chunk
-- results, failed operations and the file ledger.

CREATE TABLE dx.tenants (
    id          text PRIMARY KEY,
    notify      text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Secrets are stored as ${ENV_VAR} references inside config, never in clear.
CREATE TABLE dx.connections (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES dx.tenants(id),
    type        text NOT NULL,
    config      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dx.databases (
    tenant      text NOT NULL REFERENCES dx.tenants(id),
    id          text NOT NULL,
    primary_key text NOT NULL,
    fields      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

CREATE TABLE dx.modules (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES dx.tenants(id),
    kind        text NOT NULL,
    database    text NOT NULL,
    config      jsonb NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant, database) REFERENCES dx.databases(tenant, id)
);

CREATE TABLE dx.runs (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL REFERENCES dx.tenants(id),
    module         text NOT NULL REFERENCES dx.modules(id) ON DELETE CASCADE,
    trigger        text NOT NULL,
    requested_by   text,
    status         text NOT NULL DEFAULT 'queued',
    source_path    text,
    source_bytes   bigint,
    source_mtime   bigint,
    source_columns text[],
    n_chunks       int,
    rows_read      bigint NOT NULL DEFAULT 0,
    inserted       bigint NOT NULL DEFAULT 0,
    updated        bigint NOT NULL DEFAULT 0,
    deleted        bigint NOT NULL DEFAULT 0,
    not_inserted   bigint NOT NULL DEFAULT 0,
    not_updated    bigint NOT NULL DEFAULT 0,
    not_deleted    bigint NOT NULL DEFAULT 0,
    rows_exported  bigint NOT NULL DEFAULT 0,
    plan_failed    bigint NOT NULL DEFAULT 0,
    error_code     text,
    error_message  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    planned_at     timestamptz,
    finished_at    timestamptz,
    email_sent_at  timestamptz
);
CREATE INDEX runs_module_idx ON dx.runs (module, id DESC);

-- One row per applied chunk, written in the chunk's own transaction: its
-- presence is what makes a redelivered chunk a no-op.
CREATE TABLE dx.chunk_results (
    run_id        bigint NOT NULL REFERENCES dx.runs(id) ON DELETE CASCADE,
    chunk_no      int NOT NULL,
    rows_read     bigint NOT NULL,
    inserted      bigint NOT NULL DEFAULT 0,
    updated       bigint NOT NULL DEFAULT 0,
    deleted       bigint NOT NULL DEFAULT 0,
    not_inserted  bigint NOT NULL DEFAULT 0,
    not_updated   bigint NOT NULL DEFAULT 0,
    not_deleted   bigint NOT NULL DEFAULT 0,
    duration_ms   int NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, chunk_no)
);

-- chunk_no -1 holds the records rejected while planning (malformed lines).
CREATE TABLE dx.failed_operations (
    run_id        bigint NOT NULL REFERENCES dx.runs(id) ON DELETE CASCADE,
    chunk_no      int NOT NULL,
    row_number    bigint,
    key           text,
    operation     text,
    error_code    text NOT NULL,
    error_message text NOT NULL,
    record        jsonb
);
CREATE INDEX failed_operations_run_idx ON dx.failed_operations (run_id, row_number);

CREATE TABLE dx.file_ledger (
    connection  text NOT NULL,
    path        text NOT NULL,
    size_bytes  bigint NOT NULL,
    mtime       bigint NOT NULL,
    run_id      bigint REFERENCES dx.runs(id) ON DELETE SET NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection, path, size_bytes, mtime)
);
