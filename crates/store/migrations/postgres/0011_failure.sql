-- Why the workspace's latest start failed, in a sentence for its owner (a
-- missing container image, an unreachable engine). NULL when it did not, and
-- cleared at every start.
ALTER TABLE workspaces ADD COLUMN failure TEXT;
