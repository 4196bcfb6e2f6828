-- Where a user wants to hear that a job ended (`PUT /api/me`, `trainq user add --email`,
-- `trainq notify`): an email address and/or a webhook. The webhook's secret signs each POST's
-- body (HMAC-SHA256); it is shown to nobody, not even its owner, after it is set. NULL: none.
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN webhook_url TEXT;
ALTER TABLE users ADD COLUMN webhook_secret TEXT;

-- The outbox: one row per message a job's end owes someone, inserted in the same transaction
-- that writes the end (so a row exists exactly when the end was written, across any crash), and
-- delivered later by the notifier task (src/notify/), which retries with backoff.
--   channel: email | webhook
--   target:  the address or URL at the time of the end (a later change does not redirect it)
--   secret:  a webhook's signing secret at the time of the end; NULL for email
--   event:   the job's final state (succeeded | failed | cancelled)
--   state:   pending (not yet delivered; due at next_attempt_at, Unix seconds) | delivered
--            | failed (gave up after the last attempt; last_error says why)
-- UNIQUE (job_id, channel, event): an end written twice (a retried write) never owes twice.
CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT    NOT NULL REFERENCES jobs (id),
    owner           TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT    NOT NULL,
    secret          TEXT,
    event           TEXT    NOT NULL CHECK (event IN ('succeeded', 'failed', 'cancelled')),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    delivered_at    REAL,
    UNIQUE (job_id, channel, event)
);

-- The notifier reads what is due (pending, by time) and the admin lists failures: both through
-- this index, so neither reads the delivered history.
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
