-- Deleting an OAuth client ends every session it was given
-- (RevokeClientGrants): its grants and unredeemed codes are found by client.
CREATE INDEX IF NOT EXISTS oauth_grants_client ON oauth_grants (client_id);
CREATE INDEX IF NOT EXISTS oauth_codes_client ON oauth_codes (client_id);
