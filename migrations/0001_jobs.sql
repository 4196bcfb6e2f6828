-- The queue. One row per accepted submission; nothing accepted is ever deleted by trainq.
CREATE TABLE jobs (
    -- Submission order: FIFO scheduling and queue positions come from it.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The public id (a random UUID), what the API speaks.
    id               TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- The validated spec, normalised JSON.
    spec             TEXT    NOT NULL,
    -- The device a running job holds (and the last one it ran on, once finished).
    device           TEXT,
    submitted_at     TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    -- Latest progress snapshot (JSON): phase, epoch, step, images/s.
    progress         TEXT,
    -- Why a job failed (exit code or signal, and the log's tail).
    error            TEXT,
    -- Set by a cancel of a running job; the supervisor turns the worker's exit into `cancelled`.
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- Final evaluation (JSON): train and test loss/accuracy.
    final_metrics    TEXT,
    -- How many times a worker was started for this job (re-queues after a server crash count).
    attempts         INTEGER NOT NULL DEFAULT 0
);

-- The scheduler's question: the oldest queued jobs.
CREATE INDEX jobs_by_state ON jobs (state, seq);

-- One row per finished epoch: the accuracy and loss curves.
CREATE TABLE epoch_metrics (
    job_id     TEXT    NOT NULL REFERENCES jobs (id),
    phase      INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    train_loss REAL    NOT NULL,
    train_acc  REAL    NOT NULL,
    -- NULL when the dataset has no validation split.
    val_loss   REAL,
    val_acc    REAL,
    seconds    REAL    NOT NULL,
    PRIMARY KEY (job_id, phase, epoch)
);
