-- Time limits (issue 28): a job may use so much device time over all its runs, and a job stopped
-- at its limit ends in the new terminal state `timeout`.
--
-- SQLite cannot change a CHECK constraint in place, so the three tables whose CHECK lists job
-- ends are rebuilt with the same columns, rows, ids and indexes, and the new name added:
--   jobs.state            + 'timeout'
--   job_runs.outcome      + 'timeout' (the run that reached the limit)
--   notifications.event   + 'timeout' (a default end to be told about)
-- `jobs` is referenced by other tables' foreign keys, so this migration needs them off: the
-- store runs migrations on a connection with foreign keys off and checks them after
-- (`PRAGMA foreign_key_check`), as SQLite's documented table rebuild does.

-- The job's effective limit in seconds: its spec's `time_limit`, else the server's
-- `--default-time-limit` when it was submitted (a later change of the default does not move the
-- limits of jobs already accepted). NULL: no limit, the job runs as long as it takes.
CREATE TABLE jobs_with_timeout (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT    NOT NULL UNIQUE,
    name                 TEXT    NOT NULL,
    state                TEXT    NOT NULL
                         CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timeout')),
    spec                 TEXT    NOT NULL,
    device               TEXT,
    submitted_at         TEXT    NOT NULL,
    started_at           TEXT,
    finished_at          TEXT,
    progress             TEXT,
    error                TEXT,
    cancel_requested     INTEGER NOT NULL DEFAULT 0,
    final_metrics        TEXT,
    attempts             INTEGER NOT NULL DEFAULT 0,
    group_id             TEXT,
    owner                TEXT,
    priority             INTEGER NOT NULL DEFAULT 0,
    memory_bytes         INTEGER NOT NULL DEFAULT 0,
    memory_measured      INTEGER NOT NULL DEFAULT 0,
    notes                TEXT    NOT NULL DEFAULT '[]',
    oom_retried          INTEGER NOT NULL DEFAULT 0,
    resume_point         TEXT,
    executor_ref         TEXT,
    worker_secret_sha256 TEXT,
    parent_id            TEXT,
    params               TEXT,
    deleted_at           REAL,
    deleted_by           TEXT,
    disk_bytes           INTEGER NOT NULL DEFAULT 0,
    disk_measured        INTEGER NOT NULL DEFAULT 0,
    pruned_at            REAL,
    time_limit_seconds   INTEGER CHECK (time_limit_seconds IS NULL OR time_limit_seconds > 0)
);

INSERT INTO jobs_with_timeout (seq, id, name, state, spec, device, submitted_at, started_at, finished_at, progress,
                               error, cancel_requested, final_metrics, attempts, group_id, owner, priority,
                               memory_bytes, memory_measured, notes, oom_retried, resume_point, executor_ref,
                               worker_secret_sha256, parent_id, params, deleted_at, deleted_by, disk_bytes,
                               disk_measured, pruned_at)
    SELECT seq, id, name, state, spec, device, submitted_at, started_at, finished_at, progress,
           error, cancel_requested, final_metrics, attempts, group_id, owner, priority,
           memory_bytes, memory_measured, notes, oom_retried, resume_point, executor_ref,
           worker_secret_sha256, parent_id, params, deleted_at, deleted_by, disk_bytes,
           disk_measured, pruned_at
    FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_with_timeout RENAME TO jobs;

-- The indexes of migrations 0001–0008, as they were.
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_group ON jobs (group_id, seq);
CREATE INDEX jobs_by_owner ON jobs (owner, state);
CREATE INDEX jobs_by_owner_seq ON jobs (owner, seq);
CREATE INDEX jobs_live_by_end ON jobs (finished_at) WHERE deleted_at IS NULL;
CREATE INDEX jobs_unpruned_by_end ON jobs (finished_at) WHERE deleted_at IS NULL AND pruned_at IS NULL;
CREATE INDEX jobs_by_owner_size ON jobs (owner, disk_bytes) WHERE deleted_at IS NULL;
CREATE INDEX jobs_unmeasured ON jobs (seq) WHERE disk_measured = 0 AND finished_at IS NOT NULL;

-- Runs: the device time a job has used is the sum of its runs' lengths (`job_runs_by_job`), so
-- a re-queue (out of memory, a full disk, a server restart) never resets its limit.
CREATE TABLE job_runs_with_timeout (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL REFERENCES jobs (id),
    owner      TEXT,
    device     TEXT    NOT NULL,
    started_at REAL    NOT NULL,
    ended_at   REAL,
    outcome    TEXT
               CHECK (outcome IS NULL
                      OR outcome IN ('succeeded', 'failed', 'cancelled', 'interrupted', 'requeued', 'storage',
                                     'timeout'))
);

INSERT INTO job_runs_with_timeout (id, job_id, owner, device, started_at, ended_at, outcome)
    SELECT id, job_id, owner, device, started_at, ended_at, outcome FROM job_runs;

DROP TABLE job_runs;
ALTER TABLE job_runs_with_timeout RENAME TO job_runs;

CREATE INDEX job_runs_by_owner ON job_runs (owner, ended_at);
CREATE INDEX job_runs_by_job ON job_runs (job_id, id);

-- The outbox, with `timeout` among the ends a message may be about.
CREATE TABLE notifications_with_timeout (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT    NOT NULL REFERENCES jobs (id),
    owner           TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          TEXT    NOT NULL,
    secret          TEXT,
    event           TEXT    NOT NULL CHECK (event IN ('succeeded', 'failed', 'cancelled', 'timeout')),
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    delivered_at    REAL,
    UNIQUE (job_id, channel, event)
);

INSERT INTO notifications_with_timeout (id, job_id, owner, channel, target, secret, event, state, attempts,
                                        next_attempt_at, last_error, created_at, delivered_at)
    SELECT id, job_id, owner, channel, target, secret, event, state, attempts,
           next_attempt_at, last_error, created_at, delivered_at
    FROM notifications;

DROP TABLE notifications;
ALTER TABLE notifications_with_timeout RENAME TO notifications;

CREATE INDEX notifications_due ON notifications (state, next_attempt_at);

-- A job resumed from another's checkpoint (`POST /api/jobs/{id}/resubmit?resume=true`) starts
-- with the epochs that checkpoint holds, copied from its parent when it is accepted:
-- `ran_in_job` names the job whose run trained the epoch (NULL: this job's own), so the child's
-- curves hold every epoch exactly once and say whose each one is.
ALTER TABLE epoch_metrics ADD COLUMN ran_in_job TEXT;
