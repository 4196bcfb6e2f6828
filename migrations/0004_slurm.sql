-- Jobs handed to Slurm: the Slurm job id (so a restarted server re-attaches instead of
-- re-queueing) and the SHA-256 of the per-job secret its relay reports with (never the secret).
ALTER TABLE jobs ADD COLUMN executor_ref TEXT;
ALTER TABLE jobs ADD COLUMN worker_secret_sha256 TEXT;
