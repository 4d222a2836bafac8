-- detect_open_incidents: the one open or contained incident of an
-- identity. A responder claims the identity's row in the transaction that
-- stores a new incident (internal/server/detect_respond.go): the primary
-- key lets one replica's playbook fire for an identity and makes every
-- other replica join that incident instead of opening its own, however
-- close together their findings came. Releasing the incident deletes the
-- row. Stores that already hold several open incidents for one identity
-- (opened by replicas before this table existed) keep them; the newest
-- becomes the one the responders join.
CREATE TABLE IF NOT EXISTS detect_open_incidents (
    identity TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL
);
INSERT INTO detect_open_incidents (identity, incident_id)
SELECT i.identity, i.id FROM detect_incidents i
WHERE i.state IN ('open', 'contained') AND NOT EXISTS (
    SELECT 1 FROM detect_incidents j
    WHERE j.identity = i.identity AND j.state IN ('open', 'contained')
      AND (j.opened_at > i.opened_at OR (j.opened_at = i.opened_at AND j.id > i.id)))
ON CONFLICT (identity) DO NOTHING;
