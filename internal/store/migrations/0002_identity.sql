-- Identity plane: the global change version, registration entries, join
-- tokens, attested nodes, issued SVIDs, revocations and the sealed CA state.
-- Times are Unix nanoseconds (BIGINT); durations are nanoseconds.

-- counters holds named monotonic counters. "version" is the global change
-- version: every change transaction increments it with UPDATE ... RETURNING,
-- whose row lock makes concurrent writers (several PostgreSQL replicas)
-- commit in version order, so a watcher never misses a lower version that
-- commits after a higher one.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('version', 0);

-- section_versions: the global version at which each watch section last
-- changed (bundle, entries, revocations, policies, ...).
CREATE TABLE IF NOT EXISTS section_versions (
    section TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

-- parent_versions: the global version at which the entries parented by a
-- node last changed, so each watch stream sends a node only its own changes.
CREATE TABLE IF NOT EXISTS parent_versions (
    parent_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    -- canonical JSON array of {"type","value"}, sorted
    selectors TEXT NOT NULL,
    -- hex SHA-256 of the canonical selector list: with spiffe_id and
    -- parent_id it makes duplicates impossible
    selectors_key TEXT NOT NULL,
    x509_ttl BIGINT NOT NULL,
    jwt_ttl BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    labels TEXT NOT NULL,
    revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_identity ON entries (spiffe_id, parent_id, selectors_key);
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent_id);

-- join_tokens keeps only the SHA-256 of each token.
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    token_hash {{blob}} NOT NULL,
    spiffe_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS join_tokens_hash ON join_tokens (token_hash);

-- nodes: every attested agent (or sidecar acting as its own agent) and
-- what it last acknowledged.
CREATE TABLE IF NOT EXISTS nodes (
    spiffe_id TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    attested_at BIGINT NOT NULL,
    serial TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    component TEXT NOT NULL,
    acked_version BIGINT NOT NULL,
    policy_version BIGINT NOT NULL,
    last_ack BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    remote_addr TEXT NOT NULL
);

-- svids: every certificate the server issued, until it expires: revoking a
-- serial looks up its expiry here, and node credentials are checked here.
CREATE TABLE IF NOT EXISTS svids (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    issued_to TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS svids_not_after ON svids (not_after);

CREATE TABLE IF NOT EXISTS revoked_ids (
    spiffe_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS revoked_serials (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);

-- ca_state: the CA's sealed state (private keys encrypted with the KEK,
-- which never enters the store).
CREATE TABLE IF NOT EXISTS ca_state (
    id INTEGER PRIMARY KEY,
    state {{blob}} NOT NULL,
    updated_at BIGINT NOT NULL
);
