-- Control plane tenancy: each platform instance that uses a standalone
-- control plane is a tenant with its own token (stored hashed), and every
-- workspace the control plane runs belongs to exactly one tenant.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE cp_workspaces (
    workspace_id TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    created_at   BIGINT NOT NULL
);
CREATE INDEX cp_workspaces_tenant ON cp_workspaces(tenant_id);
