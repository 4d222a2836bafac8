-- The CA authority (X.509 authority or JWT key ID, as `moatless ca show`
-- lists it) whose SVID a token was obtained with: the JWT-SVID of a jwt
-- login, the X509-SVID of a cert login or of the mTLS identity that
-- created it (inherited down a token tree). Revoking that authority ends
-- the token. Empty: none (an approle login, an admin's token).
ALTER TABLE secrets_tokens ADD COLUMN ca_authority TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS secrets_tokens_ca_authority ON secrets_tokens (ca_authority);
-- The same for a lease: the CA authority of the SVID of the token or mTLS
-- identity that obtained it, so that revoking the authority revokes the
-- lease (a stolen CA key let its holder obtain database users directly).
ALTER TABLE secrets_leases ADD COLUMN ca_authority TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS secrets_leases_ca_authority ON secrets_leases (ca_authority);
