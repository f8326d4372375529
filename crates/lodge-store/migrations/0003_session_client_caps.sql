-- What a legacy session's client declared it can answer (sampling, elicitation, roots), as the
-- hub's bit set: upstream servers' questions are relayed only to clients that can answer them,
-- also after a hub restart.
ALTER TABLE sessions ADD COLUMN client_caps INTEGER NOT NULL DEFAULT 0;
