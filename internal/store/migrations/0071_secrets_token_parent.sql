-- A token created by another token (auth/token/create without no_parent)
-- is its child, as in Vault: revoking the parent revokes it. Empty: an
-- orphan.
ALTER TABLE secrets_tokens ADD COLUMN parent_accessor TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS secrets_tokens_parent ON secrets_tokens (parent_accessor);
