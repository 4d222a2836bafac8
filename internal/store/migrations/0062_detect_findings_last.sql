-- The risk section of the watch stream is computed from the findings seen
-- within the risk window (internal/server/detect_risk.go): by last sighting.
CREATE INDEX IF NOT EXISTS detect_findings_last ON detect_findings (last_at);
