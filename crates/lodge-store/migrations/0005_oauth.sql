-- The hub as an OAuth 2.1 authorization server for MCP clients.
-- Access tokens it issues are ordinary `lodge_` rows in `tokens`, marked with the client that
-- holds them, the MCP endpoint URL they are bound to, and the grant family they belong to (so a
-- refresh-token replay revokes every token of that grant).
ALTER TABLE tokens ADD COLUMN client TEXT;
ALTER TABLE tokens ADD COLUMN resource TEXT;
ALTER TABLE tokens ADD COLUMN family TEXT;
CREATE INDEX tokens_family ON tokens(family) WHERE family IS NOT NULL;

-- Clients registered through RFC 7591 dynamic registration (configured clients and client ID
-- metadata documents are not stored here).
CREATE TABLE oauth_clients (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    redirect_uris  TEXT NOT NULL,             -- JSON array of strings
    created_ms     INTEGER NOT NULL
);

-- Refresh tokens (hashes only). Each use rotates: the used row keeps `rotated_ms`, so a second
-- presentation is recognised as a replay and revokes the family.
CREATE TABLE oauth_refresh (
    hash         BLOB PRIMARY KEY,            -- SHA-256 of the refresh token
    family       TEXT NOT NULL,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id    TEXT NOT NULL,
    client_name  TEXT NOT NULL,
    resource     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    rotated_ms   INTEGER
);
CREATE INDEX oauth_refresh_family ON oauth_refresh(family);

-- A grant lives only as long as its access tokens are not revoked: deleting one (`token revoke`,
-- the REST API, `/oauth/revoke`, a user's deprovisioning, removal) ends the grant's refresh
-- tokens too, so nothing can mint the access back. Expired access tokens are kept as rows, so
-- expiry alone does not end the grant.
CREATE TRIGGER tokens_end_grant AFTER DELETE ON tokens
WHEN OLD.family IS NOT NULL
BEGIN
    DELETE FROM oauth_refresh WHERE family = OLD.family;
END;
