-- The policy store: Istio security policies in force, versioned. Every
-- change (apply, delete, rollback) is a new policy version; an object row
-- is in force from from_version until to_version (0 while current), so the
-- set at any version is a range query and storage grows with changes, not
-- with versions times policies.
INSERT INTO counters (name, value) VALUES ('policy_version', 0);

CREATE TABLE IF NOT EXISTS policy_versions (
    version BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    -- for a rollback: the version whose set it restored
    source_version BIGINT NOT NULL,
    -- JSON array of {"op","kind","namespace","name"}
    changes TEXT NOT NULL,
    documents BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS policy_objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    from_version BIGINT NOT NULL,
    to_version BIGINT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name, from_version)
);
CREATE INDEX IF NOT EXISTS policy_objects_to ON policy_objects (to_version);
