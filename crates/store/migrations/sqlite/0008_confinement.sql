-- What the control plane gave a workspace at its last start: how it is
-- isolated (bwrap, container, pod, none) and whether its tier's limits
-- apply (enforced, none). NULL before its first start.
ALTER TABLE workspaces ADD COLUMN isolation TEXT;
ALTER TABLE workspaces ADD COLUMN limits TEXT;
