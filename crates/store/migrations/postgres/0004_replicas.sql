-- Several platform replicas on one database: what a reconciler observed of a
-- workspace's compute lives on its row (any replica can pick up where
-- another left), and a lease on the row lets one replica at a time act on
-- it. `leases` holds named leases for work done by one replica at a time
-- (the sweeper).
ALTER TABLE workspaces ADD COLUMN instance_generation BIGINT;
ALTER TABLE workspaces ADD COLUMN started_at BIGINT;
ALTER TABLE workspaces ADD COLUMN last_heartbeat BIGINT;
ALTER TABLE workspaces ADD COLUMN lease_holder TEXT;
ALTER TABLE workspaces ADD COLUMN lease_until BIGINT;

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
