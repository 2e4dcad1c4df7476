-- The PostgreSQL twin of migrations/sqlite/0001_init.sql: the same tables and
-- columns, integers as BIGINT (what the store binds), serial keys for the
-- append-only logs.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    is_default  BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

CREATE TABLE workspaces (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES orgs(id),
    name             TEXT NOT NULL,
    role             TEXT,
    parent_id        TEXT,
    tier             BIGINT NOT NULL,
    runtime          TEXT NOT NULL,
    env              TEXT NOT NULL,
    compute          TEXT NOT NULL,
    resolved_mode    TEXT,
    desired          TEXT NOT NULL,
    generation       BIGINT NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,
    instance_id      TEXT,
    url              TEXT,
    delete_erase     BIGINT,
    compute_released BIGINT NOT NULL DEFAULT 1,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    removed_at       BIGINT
);
CREATE INDEX workspaces_parent ON workspaces(parent_id);
CREATE INDEX workspaces_org ON workspaces(org_id);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    org_id       TEXT,
    workspace_id TEXT,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX tokens_workspace ON tokens(workspace_id);

CREATE TABLE audit (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    workspace_id TEXT,
    volume_id    TEXT,
    reason       TEXT,
    detail       TEXT
);
CREATE INDEX audit_workspace ON audit(workspace_id);

CREATE TABLE volumes (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    state         TEXT NOT NULL,
    bytes         BIGINT NOT NULL DEFAULT 0,
    size_gb       BIGINT,
    retain_until  BIGINT,
    erase_after   BIGINT,
    erased_at     BIGINT,
    bytes_erased  BIGINT,
    erased_by     TEXT,
    reason        TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX volumes_workspace ON volumes(workspace_id);
CREATE INDEX volumes_state ON volumes(state);

CREATE TABLE volume_history (
    seq         BIGSERIAL PRIMARY KEY,
    volume_id   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT
);
CREATE INDEX volume_history_volume ON volume_history(volume_id);

CREATE TABLE instances (
    workspace_id TEXT PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    mode         TEXT NOT NULL,
    started_at   BIGINT NOT NULL
);
