-- Ending all of a user's sessions (password reset, MFA reset, deletion)
-- finds their grants and unredeemed codes by user.
CREATE INDEX IF NOT EXISTS oauth_grants_user ON oauth_grants (user_id);
CREATE INDEX IF NOT EXISTS oauth_codes_user ON oauth_codes (user_id);
