-- A token from a role with token_bound_cidrs is usable only from those
-- addresses (Vault ties the token to them), not only logged in from them.
ALTER TABLE secrets_tokens ADD COLUMN bound_cidrs TEXT NOT NULL DEFAULT '[]';
