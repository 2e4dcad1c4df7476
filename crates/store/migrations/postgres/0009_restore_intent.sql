-- A restore is intent first: the request is recorded on the removed row
-- before the control plane brings the volume back, so a crash in between
-- leaves a request that the reconciler finishes (or cancels, once the data
-- is erased), never an active volume that nothing owns.
ALTER TABLE workspaces ADD COLUMN restore_requested_at BIGINT;
ALTER TABLE workspaces ADD COLUMN restore_by TEXT;

-- Fencing: every grant of a workspace's lease (and every release) moves
-- its fence on; a replica writes observed state only with the fence it was
-- granted, so one that lost its lease can no longer record anything.
ALTER TABLE workspaces ADD COLUMN lease_fence BIGINT NOT NULL DEFAULT 0;
