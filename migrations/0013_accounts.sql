-- Accounts over the API (issue 29): disabling, token age, last request, and welcome messages.

-- When the admin disabled the account (Unix seconds); NULL: enabled. A disabled account's token
-- answers 401 "account disabled"; its jobs and their files stay.
ALTER TABLE users ADD COLUMN disabled_at REAL;
-- When the current token was made (Unix seconds), for `--token-ttl-days`. Rows from before this
-- migration count from the account's creation, which is when their token was made or earlier.
ALTER TABLE users ADD COLUMN token_issued_at REAL;
UPDATE users SET token_issued_at = CAST(strftime('%s', created_at) AS REAL);
-- The person's full name as the roster gives it ("Doe, Jane"), shown to the admin; NULL: none.
ALTER TABLE users ADD COLUMN full_name TEXT;
-- When the account last sent a request (Unix seconds; written at most once a minute, so a busy
-- student costs no write per request); NULL: never.
ALTER TABLE users ADD COLUMN last_request_at REAL;

-- The outbox also carries messages that are about an account rather than a job: a `welcome`
-- names the user (owner) and the address (target) and holds no token: the notifier makes the
-- token (a rotation) when it delivers the message, so no token is ever stored in clear. SQLite
-- cannot relax a CHECK or a NOT NULL in place, so the table is rebuilt with the same rows and ids:
--   job_id: the job whose end this is; NULL for a welcome
--   event:  succeeded | failed | cancelled | timeout (a job's end) | welcome (a new account's token)
CREATE TABLE notifications_with_welcome (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT    REFERENCES jobs (id),
    owner           TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT    NOT NULL,
    secret          TEXT,
    event           TEXT    NOT NULL CHECK (event IN ('succeeded', 'failed', 'cancelled', 'timeout', 'welcome')),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    delivered_at    REAL,
    CHECK ((job_id IS NULL) = (event = 'welcome')),
    UNIQUE (job_id, channel, event)
);
INSERT INTO notifications_with_welcome
    (id, job_id, owner, channel, target, secret, event, state, attempts, next_attempt_at, last_error, created_at, delivered_at)
    SELECT id, job_id, owner, channel, target, secret, event, state, attempts, next_attempt_at, last_error, created_at, delivered_at
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_with_welcome RENAME TO notifications;
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
