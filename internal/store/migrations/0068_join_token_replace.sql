-- A join token may replace the node it names: consuming it revokes every
-- earlier node SVID of that SPIFFE ID (re-provisioning after a compromise).
ALTER TABLE join_tokens ADD COLUMN replace_node INTEGER NOT NULL DEFAULT 0;
