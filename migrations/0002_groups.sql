-- Repeated runs: a submission with `repeats: N` becomes N sibling jobs (seeds seed … seed+N−1)
-- sharing a group id, so their metrics can be reported as mean ± std.
ALTER TABLE jobs ADD COLUMN group_id TEXT;

CREATE INDEX jobs_by_group ON jobs (group_id, seq);
