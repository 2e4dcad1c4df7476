-- Snapshots (SPEC §15): one record per snapshot of a workspace's volume;
-- the content is in the repository under <data-dir>/snapshots/<org>/. The
-- record is written (state 'capturing') before any chunk, so repository
-- data without a record is an orphan to report, never ours to delete.
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    at            BIGINT NOT NULL,
    label         TEXT,
    state         TEXT NOT NULL,
    consistency   TEXT,
    frozen_ms     BIGINT,
    files         BIGINT NOT NULL DEFAULT 0,
    bytes         BIGINT NOT NULL DEFAULT 0,
    new_bytes     BIGINT NOT NULL DEFAULT 0,
    created_by    TEXT NOT NULL,
    erase_after   BIGINT,
    erased_at     BIGINT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX snapshots_workspace ON snapshots(workspace_id);
CREATE INDEX snapshots_state ON snapshots(state);

-- The key each org's chunks are addressed with (keyed BLAKE3): kept here,
-- never in the repository, so that chunk names say nothing about content
-- to whoever reads the repository alone, and no two orgs share a chunk.
CREATE TABLE snapshot_keys (
    org_id      TEXT PRIMARY KEY,
    chunk_key   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Legal hold: while set, nothing of the workspace is erased and its grace
-- clocks stand still.
ALTER TABLE workspaces ADD COLUMN hold_reason TEXT;
ALTER TABLE workspaces ADD COLUMN hold_by TEXT;
ALTER TABLE workspaces ADD COLUMN hold_at BIGINT;
-- A clone: the snapshot whose content the volume starts as.
ALTER TABLE workspaces ADD COLUMN seed_snapshot_id TEXT;
