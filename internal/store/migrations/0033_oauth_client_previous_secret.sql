-- Zero-downtime secret rotation: the previous secret's hash stays valid
-- until previous_secret_until (unix seconds; 0: not valid).
ALTER TABLE oauth_clients ADD COLUMN previous_secret_hash {{blob}};
ALTER TABLE oauth_clients ADD COLUMN previous_secret_until BIGINT NOT NULL DEFAULT 0;
