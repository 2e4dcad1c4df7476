-- The org of an audit event's workspace, on the event itself, so that an
-- org token's `GET /audit` is scoped in the query (an index seek on
-- `(org_id, seq)`) instead of filtered after the LIMIT, which gave short or
-- empty pages when other orgs were busy. A workspace never changes org, so
-- the copy cannot go stale. Existing events are backfilled from their
-- workspace; events with no workspace, or of a workspace this store does not
-- hold (a standalone control plane's), keep NULL: no org sees them, as before.
ALTER TABLE audit ADD COLUMN org_id TEXT;
UPDATE audit SET org_id = (SELECT w.org_id FROM workspaces w WHERE w.id = audit.workspace_id)
    WHERE workspace_id IS NOT NULL;
CREATE INDEX audit_org_seq ON audit(org_id, seq);
-- A workspace's events newest first, without a sort.
CREATE INDEX audit_workspace_seq ON audit(workspace_id, seq);
