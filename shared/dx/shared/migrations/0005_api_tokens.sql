-- Bearer tokens of the HTTP API (dx serve), one tenant each. Only the SHA-256
-- of a token is kept: a token is 256 random bits, so its hash cannot be
-- reversed by guessing, and a leaked table gives no usable token.
CREATE TABLE dx.api_tokens (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL REFERENCES dx.tenants(id) ON DELETE CASCADE,
    name         text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_tenant_idx ON dx.api_tokens (tenant, id);
