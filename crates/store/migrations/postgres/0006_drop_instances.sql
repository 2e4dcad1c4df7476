-- Processes a previous run left are found through /proc (their environment
-- names the control plane's data dir), and the running instance lives on the
-- workspace row; the separate record of instances is no longer written.
DROP TABLE instances;
