-- Device-hour budgets: an admin's override of one user's budget per period
-- (`PATCH /api/admin/users/{name}` with `gpu_hours` / `cpu_hours`). A NULL column, or no row,
-- means the server's `--gpu-hours-per-user` / `--cpu-hours-per-user`. Read by the scheduler at
-- every pass that has jobs, so a change takes effect without a restart.
CREATE TABLE user_budgets (
    user_name TEXT PRIMARY KEY REFERENCES users (name),
    gpu_hours REAL CHECK (gpu_hours IS NULL OR gpu_hours >= 0),
    cpu_hours REAL CHECK (cpu_hours IS NULL OR cpu_hours >= 0)
);
