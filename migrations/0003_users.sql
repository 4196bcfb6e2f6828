-- Users and their API tokens. The token is shown once by `trainq user add`; only its SHA-256 is
-- kept (tokens are 256 random bits, so a plain hash cannot be brute-forced).
CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    token_sha256 TEXT    NOT NULL UNIQUE,
    admin        INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT    NOT NULL
);

-- Who submitted a job (a user name; NULL for jobs accepted before users existed, which only
-- admins can act on).
ALTER TABLE jobs ADD COLUMN owner TEXT;
-- Admin-set priority: higher runs first among one user's jobs and between users of equal usage.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- GPU memory the job needs: the estimate at submit, replaced by the measured peak (plus margin)
-- after its first epoch.
ALTER TABLE jobs ADD COLUMN memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN memory_measured INTEGER NOT NULL DEFAULT 0;
-- Things that happened to the job that its spec does not say (JSON array of strings), e.g. a
-- re-queue after running out of GPU memory with half the batch size.
ALTER TABLE jobs ADD COLUMN notes TEXT NOT NULL DEFAULT '[]';
-- Set once the job was re-queued after running out of memory (it is retried once).
ALTER TABLE jobs ADD COLUMN oom_retried INTEGER NOT NULL DEFAULT 0;
-- Where the resumable checkpoint stands (JSON {phase, epoch, step}); NULL before the first.
ALTER TABLE jobs ADD COLUMN resume_point TEXT;

CREATE INDEX jobs_by_owner ON jobs (owner, state);

-- One row per worker start: fair share charges each user the device time of their runs, and the
-- history shows every interruption. Times are Unix seconds.
CREATE TABLE job_runs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL REFERENCES jobs (id),
    owner      TEXT,
    device     TEXT    NOT NULL,
    started_at REAL    NOT NULL,
    ended_at   REAL,
    -- succeeded | failed | cancelled | interrupted (server stopped or died; the job was re-queued)
    -- | requeued (out of memory, retried with half the batch)
    outcome    TEXT
);

CREATE INDEX job_runs_by_owner ON job_runs (owner, ended_at);
CREATE INDEX job_runs_by_job ON job_runs (job_id, id);
