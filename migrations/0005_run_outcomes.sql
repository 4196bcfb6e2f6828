-- A run's outcome is one of a closed set (`domain::outcome::RunOutcome`), checked like
-- `jobs.state`: SQLite cannot add a CHECK to an existing column, so the table is rebuilt with the
-- same rows and ids.
--   succeeded | failed | cancelled
--   interrupted: stopped with a checkpoint (server stopped or died, a Slurm time limit); re-queued
--   requeued:    out of memory with retry_on_oom; re-queued once with half the batch
--   storage:     a write failed (disk full, I/O error); re-queued to resume once there is room
CREATE TABLE job_runs_checked (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL REFERENCES jobs (id),
    owner      TEXT,
    device     TEXT    NOT NULL,
    started_at REAL    NOT NULL,
    ended_at   REAL,
    outcome    TEXT
               CHECK (outcome IS NULL
                      OR outcome IN ('succeeded', 'failed', 'cancelled', 'interrupted', 'requeued', 'storage'))
);

INSERT INTO job_runs_checked (id, job_id, owner, device, started_at, ended_at, outcome)
    SELECT id, job_id, owner, device, started_at, ended_at, outcome FROM job_runs;

DROP TABLE job_runs;
ALTER TABLE job_runs_checked RENAME TO job_runs;

CREATE INDEX job_runs_by_owner ON job_runs (owner, ended_at);
CREATE INDEX job_runs_by_job ON job_runs (job_id, id);

-- One row that `GET /readyz` rewrites to prove the database still takes writes.
CREATE TABLE server_health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT    NOT NULL
);
