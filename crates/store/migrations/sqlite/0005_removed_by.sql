-- Who asked for a workspace's removal, so that a removal finished later (by
-- the reconciler, after a crash, or by another replica) still records the
-- person who asked as the one who asked to erase.
ALTER TABLE workspaces ADD COLUMN removed_by TEXT;
