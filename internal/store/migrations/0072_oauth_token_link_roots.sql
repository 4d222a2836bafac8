-- The token at the top of each exchanged token's tree (the one first
-- exchanged from), so that the tokens exchanged from one token,
-- transitively, can be counted and bounded. Empty on a row of a token
-- that was not itself exchanged (it is a root), and on rows written
-- before this migration (their tree is then counted from their parent).
ALTER TABLE oauth_token_links ADD COLUMN root_jti TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS oauth_token_links_root ON oauth_token_links (root_jti);
