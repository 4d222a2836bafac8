-- OAuth 2.0 / OIDC token service (internal/token). Times are unix seconds;
-- 0 means "not set". Secrets, codes and refresh tokens are stored as
-- SHA-256 hashes only; signing keys and TOTP keys are sealed with the KEK.
CREATE TABLE IF NOT EXISTS oauth_clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spiffe_id TEXT UNIQUE,
    secret_hash {{blob}},
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS oauth_users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_secret {{blob}},
    totp_enabled INTEGER NOT NULL DEFAULT 0,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS oauth_recovery_codes (
    user_id TEXT NOT NULL REFERENCES oauth_users(id) ON DELETE CASCADE,
    code_hash {{blob}} NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE IF NOT EXISTS oauth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    sealed {{blob}} NOT NULL,
    public_jwk {{blob}} NOT NULL,
    created_at BIGINT NOT NULL,
    activate_at BIGINT NOT NULL,
    retire_at BIGINT NOT NULL,
    expire_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS oauth_grants (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    auth_time BIGINT NOT NULL,
    amr TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS oauth_grant_tokens (
    jti TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS oauth_grant_tokens_grant ON oauth_grant_tokens (grant_id);

CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash {{blob}} PRIMARY KEY,
    grant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT NOT NULL,
    challenge TEXT NOT NULL,
    auth_time BIGINT NOT NULL,
    amr TEXT NOT NULL,
    audiences TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS oauth_refresh_tokens (
    token_hash {{blob}} PRIMARY KEY,
    grant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id);

CREATE TABLE IF NOT EXISTS oauth_revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS oauth_assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
