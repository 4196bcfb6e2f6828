-- A semester's lifecycle: deleted jobs stay as tombstones, and each job's folder has a measured
-- size so every user's disk usage is known without walking folders.
--
-- `deleted_at` (Unix seconds) and `deleted_by` (a user name, or `gc` / `retention` for the
-- server): the job's files are gone but its row stays, so history, fair share's `job_runs`,
-- groups and compare stay consistent. NULL while the job is live.
ALTER TABLE jobs ADD COLUMN deleted_at REAL;
ALTER TABLE jobs ADD COLUMN deleted_by TEXT;
-- Bytes of the job's folder as last measured: when it ended, and again after a prune. 0 before
-- the first measurement and after a delete.
ALTER TABLE jobs ADD COLUMN disk_bytes INTEGER NOT NULL DEFAULT 0;
-- Whether `disk_bytes` was measured since the job ended. Jobs that ended before this migration,
-- and any whose end was recorded but not measured (the server died in between), are measured
-- once at the next start, found through `jobs_unmeasured`.
ALTER TABLE jobs ADD COLUMN disk_measured INTEGER NOT NULL DEFAULT 0;
-- Set (Unix seconds) when gc or retention removed some of a live job's files and kept others
-- (`--keep`), so retention never selects the job again.
ALTER TABLE jobs ADD COLUMN pruned_at REAL;

-- Each user's bytes, the sum of their jobs' `disk_bytes`, kept in the same transaction as every
-- change of `disk_bytes` (`Store::set_disk_bytes`, `Store::tombstone`), so `GET /api/me`, a
-- submit's quota check and `/metrics` read one row per user whatever the number of jobs.
-- `owner` is '' for jobs from before users existed.
CREATE TABLE disk_usage (
    owner TEXT    PRIMARY KEY,
    bytes INTEGER NOT NULL DEFAULT 0
);

-- gc's question: live jobs that ended before a cutoff, oldest first (`finished_at` is RFC 3339
-- in UTC, which sorts as text). Partial indexes, so the tombstones and pruned jobs of earlier
-- passes are not walked again: one for `gc` without `--keep` (pruned jobs may still be deleted),
-- one for retention and `--keep` (pruned jobs are done).
CREATE INDEX jobs_live_by_end ON jobs (finished_at) WHERE deleted_at IS NULL;
CREATE INDEX jobs_unpruned_by_end ON jobs (finished_at) WHERE deleted_at IS NULL AND pruned_at IS NULL;
-- A quota's 507 names the user's largest jobs: read through this index, not by sorting them all.
CREATE INDEX jobs_by_owner_size ON jobs (owner, disk_bytes) WHERE deleted_at IS NULL;
-- The jobs a start measures: ended, not yet measured (the others never enter this index).
CREATE INDEX jobs_unmeasured ON jobs (seq) WHERE disk_measured = 0 AND finished_at IS NOT NULL;
