-- Detect and respond (internal/detect, internal/server/detect.go). Times
-- are Unix nanoseconds; 0 means "not set".

-- detect_edges: per-edge traffic aggregates as sidecars and gateways
-- report them, one row per reporter, minute and edge key per report
-- (readers sum). Pruned after the retention setting.
CREATE TABLE IF NOT EXISTS detect_edges (
    id {{serial}},
    minute BIGINT NOT NULL,
    reporter TEXT NOT NULL,
    direction TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER NOT NULL,
    token TEXT NOT NULL,
    requests BIGINT NOT NULL,
    req_bytes BIGINT NOT NULL,
    resp_bytes BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    latency_max_us BIGINT NOT NULL,
    pii_sampled BIGINT NOT NULL,
    pii_matches BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS detect_edges_minute ON detect_edges (minute);
CREATE INDEX IF NOT EXISTS detect_edges_source ON detect_edges (source, minute);
CREATE INDEX IF NOT EXISTS detect_edges_destination ON detect_edges (destination, minute);

-- detect_samples: raw decisions sampled by reporters (JSON of
-- wire.AuditEvent), for the forensics bundle and the dashboard.
CREATE TABLE IF NOT EXISTS detect_samples (
    id {{serial}},
    at BIGINT NOT NULL,
    reporter TEXT NOT NULL,
    source TEXT NOT NULL,
    decision TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS detect_samples_at ON detect_samples (at);
CREATE INDEX IF NOT EXISTS detect_samples_source ON detect_samples (source, at);

-- detect_workloads: what each reporter said about its workload
-- (namespace, labels, ports), for what-if replays and recommendations.
CREATE TABLE IF NOT EXISTS detect_workloads (
    spiffe_id TEXT PRIMARY KEY,
    component TEXT NOT NULL,
    namespace TEXT NOT NULL,
    labels TEXT NOT NULL,
    ports TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);

-- detect_known_edges: every (source, destination, method, path) ever
-- seen, for the new-edge detector (across restarts and replicas).
CREATE TABLE IF NOT EXISTS detect_known_edges (
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (source, destination, method, path)
);

-- detect_findings: what the detectors found. evidence and records are
-- JSON; incident_id links the incident a playbook opened for it.
CREATE TABLE IF NOT EXISTS detect_findings (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    detector TEXT NOT NULL,
    severity TEXT NOT NULL,
    identity TEXT NOT NULL,
    destination TEXT NOT NULL,
    count BIGINT NOT NULL,
    incident_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS detect_findings_at ON detect_findings (at);
CREATE INDEX IF NOT EXISTS detect_findings_identity ON detect_findings (identity, at);

-- detect_incidents: one per contained identity (JSON body: steps,
-- findings, timings).
CREATE TABLE IF NOT EXISTS detect_incidents (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS detect_incidents_identity ON detect_incidents (identity, opened_at);
CREATE INDEX IF NOT EXISTS detect_incidents_opened ON detect_incidents (opened_at);

-- detect_blocks: blocked (source, destination) pairs, pushed with the
-- revocations. expires_at 0: until released.
CREATE TABLE IF NOT EXISTS detect_blocks (
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, destination)
);

-- The playbooks, versioned as policies are (store.Playbooks family).
INSERT INTO counters (name, value) VALUES ('detect_playbook_version', 0);

CREATE TABLE IF NOT EXISTS detect_playbook_versions (
    version BIGINT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    source_version BIGINT NOT NULL,
    changes TEXT NOT NULL,
    documents BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS detect_playbook_objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    from_version BIGINT NOT NULL,
    to_version BIGINT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name, from_version)
);
CREATE INDEX IF NOT EXISTS detect_playbook_objects_to ON detect_playbook_objects (to_version);
