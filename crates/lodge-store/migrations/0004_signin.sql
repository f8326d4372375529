-- Browser sign-in: web sessions, one-time sign-in links, sign-ins waiting for the provider's
-- answer, and the provider identity each user is bound to. Secrets are kept only as SHA-256
-- hashes (session ids, link secrets, OIDC states); the provider's refresh token only sealed by
-- the vault with the user's data key.

CREATE TABLE web_sessions (
    id_hash       BLOB PRIMARY KEY,          -- SHA-256 of the cookie value
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf          TEXT NOT NULL,             -- the forms' CSRF token for this session
    method        TEXT NOT NULL,             -- oidc | token | link
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,          -- absolute: a session never outlives it
    last_seen_ms  INTEGER NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions(user_id);
CREATE INDEX web_sessions_expires ON web_sessions(expires_ms);

CREATE TABLE login_links (
    hash        BLOB PRIMARY KEY,            -- SHA-256 of the link's secret
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER                      -- set once; a used link is refused
);

-- A sign-in sent to the provider: found by the hash of its `state`, taken once.
CREATE TABLE pending_signins (
    state_hash    BLOB PRIMARY KEY,
    browser_hash  BLOB NOT NULL,             -- SHA-256 of the browser-binding cookie
    verifier      TEXT NOT NULL,             -- PKCE code verifier
    nonce         TEXT NOT NULL,
    next          TEXT NOT NULL,
    expires_ms    INTEGER NOT NULL
);

-- The provider identity (issuer + subject) a user is bound to: at most one per user, and a
-- subject names at most one user.
CREATE TABLE identities (
    user_id     INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    groups      TEXT NOT NULL DEFAULT '[]',  -- JSON array, as the provider last said
    refresh     BLOB,                        -- sealed by the vault; NULL if none was issued
    checked_ms  INTEGER NOT NULL,            -- last sign-in or recheck
    UNIQUE (issuer, subject)
);
CREATE INDEX identities_checked ON identities(checked_ms);
