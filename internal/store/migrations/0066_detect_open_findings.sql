-- detect_open_findings: the open finding of each merge key (detector,
-- identity, destination; '' for the new-edge detector, which keys by
-- identity alone, see detect.KeyOf). A replica persisting a detection
-- claims the key's row in the transaction that stores the finding
-- (store.MergeFinding): while the claim is open (its last sighting within
-- the replica's suppress window) a detection of the same key from any
-- replica folds into the claimed finding instead of inserting another,
-- so a burst that several replicas see is one finding, counted once
-- towards the identity's risk. last_at follows the finding's last
-- sighting; rows whose window has passed are pruned with the traffic.
CREATE TABLE IF NOT EXISTS detect_open_findings (
    detector TEXT NOT NULL,
    identity TEXT NOT NULL,
    destination TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (detector, identity, destination)
);
-- Findings stored before the claims existed: each key's most recently
-- seen finding becomes its claim (an expired one is merely pruned later).
INSERT INTO detect_open_findings (detector, identity, destination, finding_id, last_at)
SELECT f.detector, f.identity, CASE WHEN f.detector = 'new_edge' THEN '' ELSE f.destination END, f.id, f.last_at
FROM detect_findings f
WHERE NOT EXISTS (
    SELECT 1 FROM detect_findings g
    WHERE g.detector = f.detector AND g.identity = f.identity
      AND (f.detector = 'new_edge' OR g.destination = f.destination)
      AND (g.last_at > f.last_at OR (g.last_at = f.last_at AND g.id > f.id)))
ON CONFLICT (detector, identity, destination) DO NOTHING;
