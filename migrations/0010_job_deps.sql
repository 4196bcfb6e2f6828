-- Chained jobs: a job that waits for others to succeed (`"after": [ID, …]` in its spec) or starts
-- from another job's weights (`"init_from": {"job": ID, …}`, which waits for that job too).
-- The spec stays the truth of what was asked; this table is its index both ways: the jobs one
-- job waits for (the primary key, for cycle checks) and the jobs waiting for one job
-- (`job_deps_after`, to fail them at once when it fails). Written in the same transaction as the
-- job's insert, and rewritten with its spec by `PATCH /api/jobs/{id}`.
-- Not foreign keys, as `jobs.parent_id`: a job row outlives everything that names it.
CREATE TABLE job_deps (
    job_id   TEXT NOT NULL,
    after_id TEXT NOT NULL,
    PRIMARY KEY (job_id, after_id)
) WITHOUT ROWID;
CREATE INDEX job_deps_after ON job_deps (after_id, job_id);
