-- Lab reservations (`POST /api/admin/reservations`): devices kept for a list of users from
-- `start_at` to `end_at` (Unix seconds), once or, with `weekly`, every week from then on. The
-- scheduler reads them at every pass that has jobs (a handful of rows), so a new one applies at
-- once. Overlaps on a shared device are refused before a row is written (`domain::reservation`).
CREATE TABLE reservations (
    name       TEXT    PRIMARY KEY,
    -- JSON arrays of inventory device ids (`["gpu0"]`) and user names (`["alice", "bob"]`).
    devices    TEXT    NOT NULL,
    users      TEXT    NOT NULL,
    start_at   REAL    NOT NULL,
    end_at     REAL    NOT NULL CHECK (end_at > start_at),
    weekly     INTEGER NOT NULL DEFAULT 0 CHECK (weekly IN (0, 1)),
    created_by TEXT,
    created_at REAL    NOT NULL
);
