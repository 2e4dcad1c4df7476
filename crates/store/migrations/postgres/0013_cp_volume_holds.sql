-- Legal holds as a control plane keeps them (SPEC §15): a remote control
-- plane has no workspace rows of its own (the platform keeps those), so the
-- platform tells it of a hold, and it is kept here, by workspace. While a
-- row exists, no volume of that workspace is erased and its grace clocks
-- stand still (release moves the deadlines on by the time held). The
-- embedded control plane reads `workspaces.hold_at` instead; this table
-- stays empty there.
CREATE TABLE cp_volume_holds (
    workspace_id  TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    held_by       TEXT NOT NULL,
    held_at       BIGINT NOT NULL
);
