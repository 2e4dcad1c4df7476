-- Why the workspace's compute does not run as asked, as the backend last
-- observed it (a Kubernetes Pod Pending unschedulable, waiting on its volume
-- or image, or in a crash loop): a kind (`unschedulable`, `image_pull`, …)
-- and a sentence naming the cause. NULL when there is none; cleared at every
-- start and stop.
ALTER TABLE workspaces ADD COLUMN status_reason TEXT;
ALTER TABLE workspaces ADD COLUMN status_reason_message TEXT;
