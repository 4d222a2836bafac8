-- The SPIFFE ID whose revocation ends a token created by another token or
-- by an mTLS identity: the creator's (inherited down a token tree), so a
-- revoked workload's tokens stop with it, the ones it minted too. Empty:
-- the token's own subject decides (a cert or JWT login), or none.
ALTER TABLE secrets_tokens ADD COLUMN creator_spiffe_id TEXT NOT NULL DEFAULT '';
