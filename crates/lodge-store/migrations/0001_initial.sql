-- Lodge's first schema: users, API tokens (hashes only), legacy MCP sessions, audit records.
-- Timestamps are Unix milliseconds.
-- AUTOINCREMENT: a removed user's id is never given to a new user, so nothing keyed by id
-- (sessions in a running hub, later rooms) can pass from one person to another.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    admin       INTEGER NOT NULL DEFAULT 0,
    profile     TEXT NOT NULL DEFAULT 'default',
    created_ms  INTEGER NOT NULL
);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,           -- public 8-character id, part of the token
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash          BLOB NOT NULL,              -- SHA-256 of the whole token
    scopes        TEXT NOT NULL,
    note          TEXT NOT NULL DEFAULT '',
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER,
    last_used_ms  INTEGER
);
CREATE INDEX tokens_user ON tokens(user_id);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    protocol      TEXT NOT NULL,
    client        TEXT NOT NULL DEFAULT '',
    created_ms    INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms        INTEGER NOT NULL,
    kind         TEXT NOT NULL,               -- auth_failure | tool_call | admin
    user         TEXT,
    session      TEXT,
    action       TEXT NOT NULL,
    digest       TEXT,
    outcome      TEXT NOT NULL,
    duration_ms  INTEGER,
    client       TEXT,
    detail       TEXT
);
CREATE INDEX audit_ts ON audit(ts_ms);
CREATE INDEX audit_user_ts ON audit(user, ts_ms);
