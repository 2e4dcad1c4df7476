-- A workspace's token is minted per start and replaces the previous one, so
-- it lives on the workspace row: minting and revoking the old one is a single
-- write on the start path, and delete revokes it by clearing the column.
ALTER TABLE workspaces ADD COLUMN token_hash TEXT;
CREATE UNIQUE INDEX workspaces_token_hash ON workspaces(token_hash);
