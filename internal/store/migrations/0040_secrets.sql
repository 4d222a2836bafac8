-- The secrets service (internal/secrets). Times are Unix nanoseconds;
-- 0 means "not set". Every secret value, transit key, database DSN and
-- lease revocation datum is stored sealed by the barrier (sealed columns);
-- tokens and AppRole secret IDs are stored as SHA-256 hashes only.

-- secrets_keyring: the barrier's data keys, sealed with the root key,
-- which never enters the store. kdf is the JSON of how the root key is
-- derived (empty for a raw key; argon2id parameters and salt for a
-- passphrase): not secret.
CREATE TABLE IF NOT EXISTS secrets_keyring (
    id INTEGER PRIMARY KEY,
    sealed {{blob}} NOT NULL,
    kdf TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- secrets_objects: configuration objects of the engines by kind
-- (approle, jwt_role, transit_key, db_connection, db_role, mount):
-- their JSON spec, an optional sealed part, and an optional lookup key
-- unique within the kind (an AppRole's role_id).
CREATE TABLE IF NOT EXISTS secrets_objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    lookup TEXT,
    spec TEXT NOT NULL,
    sealed {{blob}},
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE UNIQUE INDEX IF NOT EXISTS secrets_objects_lookup ON secrets_objects (kind, lookup);

-- secrets_tokens: client tokens by accessor; token_hash is the SHA-256 of
-- the token. num_uses counts remaining uses (0: unlimited).
CREATE TABLE IF NOT EXISTS secrets_tokens (
    accessor TEXT PRIMARY KEY,
    token_hash {{blob}} NOT NULL,
    subject TEXT NOT NULL,
    display_name TEXT NOT NULL,
    policies TEXT NOT NULL,
    meta TEXT NOT NULL,
    ttl BIGINT NOT NULL,
    renewable INTEGER NOT NULL,
    num_uses BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS secrets_tokens_hash ON secrets_tokens (token_hash);
CREATE INDEX IF NOT EXISTS secrets_tokens_expires ON secrets_tokens (expires_at);

-- secrets_secret_ids: AppRole secret IDs by the SHA-256 of the ID;
-- uses_left counts remaining logins (0: unlimited).
CREATE TABLE IF NOT EXISTS secrets_secret_ids (
    id_hash {{blob}} PRIMARY KEY,
    accessor TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    spec TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS secrets_secret_ids_role ON secrets_secret_ids (role);

-- KV version 2: metadata per secret and its versions. value is the
-- sealed JSON of the version's data, NULL once destroyed.
CREATE TABLE IF NOT EXISTS kv_metadata (
    mount TEXT NOT NULL,
    path TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    oldest_version BIGINT NOT NULL,
    max_versions BIGINT NOT NULL,
    cas_required INTEGER NOT NULL,
    delete_version_after BIGINT NOT NULL,
    custom_metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (mount, path)
);

CREATE TABLE IF NOT EXISTS kv_versions (
    mount TEXT NOT NULL,
    path TEXT NOT NULL,
    version BIGINT NOT NULL,
    value {{blob}},
    created_at BIGINT NOT NULL,
    deletion_time BIGINT NOT NULL,
    destroyed INTEGER NOT NULL,
    PRIMARY KEY (mount, path, version)
);

-- secrets_leases: dynamic secrets handed out (database credentials).
-- sealed holds what revocation needs (the user name); revocation that
-- fails is retried at next_attempt_at with backoff.
CREATE TABLE IF NOT EXISTS secrets_leases (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    token_accessor TEXT NOT NULL,
    -- the SPIFFE ID behind the lease ('' for AppRole and admin tokens):
    -- revoking the ID revokes its leases
    spiffe_id TEXT NOT NULL,
    sealed {{blob}} NOT NULL,
    renewable INTEGER NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    revoke_requested_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS secrets_leases_expires ON secrets_leases (expires_at);
CREATE INDEX IF NOT EXISTS secrets_leases_token ON secrets_leases (token_accessor);
CREATE INDEX IF NOT EXISTS secrets_leases_spiffe_id ON secrets_leases (spiffe_id);

-- Access policies of the secrets service, versioned exactly like the mesh
-- policies (0020_policies.sql): an object row is in force from
-- from_version until to_version (0 while current).
INSERT INTO counters (name, value) VALUES ('secrets_policy_version', 0);

CREATE TABLE IF NOT EXISTS secrets_policy_versions (
    version BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    source_version BIGINT NOT NULL,
    changes TEXT NOT NULL,
    documents BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS secrets_policy_objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    from_version BIGINT NOT NULL,
    to_version BIGINT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name, from_version)
);
CREATE INDEX IF NOT EXISTS secrets_policy_objects_to ON secrets_policy_objects (to_version);
