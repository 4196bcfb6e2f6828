-- Where a job came from, so a student can tell the runs of an experiment apart and redo one.
-- `parent_id`: the job this one was resubmitted from (`POST /api/jobs/{id}/resubmit`, the
-- dashboard's "Clone & edit", `trainq redo`), NULL for a fresh submission. Not a foreign key:
-- jobs are never deleted, and a parent's id is only ever shown and linked.
ALTER TABLE jobs ADD COLUMN parent_id TEXT;
-- `params`: a sweep job's combination, a JSON object mapping each swept JSON pointer to the value
-- this job got (e.g. {"/image_size": 256, "/optimizer/lr": 1e-5}); NULL for a job of no sweep.
-- The group page and `compare` put the jobs of one combination on one row by it, without
-- diffing specs.
ALTER TABLE jobs ADD COLUMN params TEXT;
