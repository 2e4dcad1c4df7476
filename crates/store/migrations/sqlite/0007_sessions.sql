-- Canvas sessions. The cookie holds a random session id; only its SHA-256
-- is kept here, with the SHA-256 of the token that signed in (so that a
-- session ends when its token stops being accepted), who that token was
-- (`admin`, or `org` with its org), and when the session expires. Sign out
-- sets `revoked_at`.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    org_id      TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sessions_expires_at ON sessions(expires_at);
