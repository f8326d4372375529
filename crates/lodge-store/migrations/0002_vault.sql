-- The secret vault (lodge-vault): envelope encryption. Every blob here is sealed with
-- XChaCha20-Poly1305 as nonce || ciphertext; nothing in these tables is readable without the
-- master key, which is never stored in the database.

-- One row: the master key seals a fixed plaintext, so a wrong key is detected at start
-- instead of producing garbage. Replaced only together with every data key (rotation).
CREATE TABLE vault_meta (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    verifier  BLOB NOT NULL
);

-- A random data key per user, wrapped by the master key (associated data binds the user id).
CREATE TABLE vault_keys (
    user_id  INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    wrapped  BLOB NOT NULL
);

-- One row per field of a named secret, sealed with the owner's data key; the associated data
-- binds user id, secret name and field name, so a row moved anywhere else fails to open.
CREATE TABLE secrets (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    field       TEXT NOT NULL,
    sealed      BLOB NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (user_id, name, field)
);
