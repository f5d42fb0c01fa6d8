-- The console: its users (per tenant, with a role), their sessions, sign-in attempts (for the rate
-- limit) and the audit log of changes made in the console.

CREATE TABLE dx.users (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL REFERENCES dx.tenants(id),
    username       text NOT NULL UNIQUE,
    role           text NOT NULL CHECK (role IN ('viewer', 'operator')),
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz,
    disabled_at    timestamptz
);

-- A session cookie's value is random: only its SHA-256 is kept, with the CSRF token of its forms.
CREATE TABLE dx.sessions (
    token_sha256  bytea PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES dx.users(id) ON DELETE CASCADE,
    csrf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_user ON dx.sessions (user_id);

CREATE TABLE dx.sign_in_failures (
    username  text NOT NULL,
    address   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_username ON dx.sign_in_failures (username, at);
CREATE INDEX sign_in_failures_address ON dx.sign_in_failures (address, at);

-- Who changed what in the console, before and after; `console_changes` on a module holds what the
-- console set since the last `dx apply`, which that apply must not lose in silence.
CREATE TABLE dx.audit (
    id      bigserial PRIMARY KEY,
    tenant  text NOT NULL,
    module  text,
    actor   text NOT NULL,
    action  text NOT NULL,
    before  jsonb,
    after   jsonb,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_module ON dx.audit (tenant, module, at);

ALTER TABLE dx.modules ADD COLUMN console_changes jsonb NOT NULL DEFAULT '{}';

-- "Test connection" and "Preview" of the console: asked by the API, answered by a worker (which has
-- the data libraries), nothing else written.
CREATE TABLE dx.checks (
    id            bigserial PRIMARY KEY,
    tenant        text NOT NULL,
    module        text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('connection', 'preview')),
    requested_by  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    result        jsonb
);
