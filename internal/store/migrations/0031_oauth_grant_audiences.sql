-- The audiences a login asked for (authorization request audience /
-- resource), so refreshed access tokens keep them.
ALTER TABLE oauth_grants ADD COLUMN audiences TEXT NOT NULL DEFAULT '[]';
