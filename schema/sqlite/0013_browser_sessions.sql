-- 0013: browser sign-ins kept on the server, one row per sign-in, named by the cookie.
-- A signed cookie alone stayed valid after sign-out (a copy of it worked until its token was
-- revoked or it expired); now sign-out, token revocation and `agnes-home sessions revoke` end
-- the row, and a cookie whose row is ended, expired or missing signs no one in.
-- Cookies signed before this script name no row: those browsers sign in again.

CREATE TABLE browser_sessions (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_id    INTEGER REFERENCES api_tokens(id) ON DELETE CASCADE,  -- the token signed in with
    secret_hash TEXT    NOT NULL UNIQUE,  -- sha256 hex of the random id the cookie carries
    created_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    ended_at    TEXT                      -- signed out or revoked
);
CREATE INDEX browser_sessions_user ON browser_sessions(user_id);
CREATE INDEX browser_sessions_token ON browser_sessions(token_id);
