-- A workspace's usage over the last 24 hours, for the chart on its canvas
-- page (`GET /workspaces/:id/usage`): one row per workspace per 15-minute
-- bucket (`bucket` is the bucket's start, in milliseconds), holding the
-- data size last measured in it (NULL when a restart came before any
-- measurement) and how many restarts the reconciler made in it. Every
-- write first removes the buckets older than the window, so the table
-- holds at most 96 rows per workspace, whatever the uptime.
CREATE TABLE usage_samples (
    workspace_id  TEXT NOT NULL,
    bucket        BIGINT NOT NULL,
    bytes         BIGINT,
    restarts      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, bucket)
);
CREATE INDEX usage_samples_bucket ON usage_samples (bucket);
