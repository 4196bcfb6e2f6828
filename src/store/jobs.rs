//! The `jobs` and `epoch_metrics` tables, `job_runs` (one row per worker start: what fair share
//! charges and what the crash history shows) and `job_deps` (what each queued job waits for,
//! `after` and `init_from`, indexed both ways, written with the job's insert and by `PATCH`).
//!
//! `job_page` reads one page of the list through an index in `seq` order, so its cost does not
//! grow with the jobs ever submitted. `finish_job` also fails the queued jobs that wait for a job
//! that failed, and every terminal write enqueues the notifications it owes in the same
//! transaction (`notifications.rs`). Times are decoded into `Timestamp` when a row is read and
//! written back as the same RFC 3339 text and Unix seconds, since SQL compares the text.

use super::{legal, Store, StoreError};
use crate::domain::job::ResumePoint;
use crate::domain::outcome::RunOutcome;
use crate::domain::worker_protocol::{EpochMetrics, FinalMetrics};
use crate::domain::{Job, JobId, JobProgress, JobSpec, JobState, TimeLimit, Timestamp};

/// One `epoch_metrics` row: phase, epoch, train loss and accuracy, val loss and accuracy, seconds.
type EpochRow = (u32, u32, f64, f64, Option<f64>, Option<f64>, f64);
/// An `epoch_metrics` row as [`EpochRow`], and the job whose run trained it if another.
type EpochRowWithOrigin = (u32, u32, f64, f64, Option<f64>, Option<f64>, f64, Option<String>);

/// What the API inserts for an accepted submission.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The new job's id.
    pub id: JobId,
    /// The spec's name.
    pub name: String,
    /// The validated spec.
    pub spec: JobSpec,
    /// The repeat or sweep group it belongs to, if any.
    pub group_id: Option<String>,
    /// The job it was resubmitted from, if any.
    pub parent_id: Option<JobId>,
    /// A sweep job's combination: each swept JSON pointer and the value this job got.
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// Notes it starts with (e.g. what a resubmit changed), before any the queue adds.
    pub notes: Vec<String>,
    /// Who submitted it.
    pub owner: Option<String>,
    /// Admin-set priority (0 for students).
    pub priority: i64,
    /// Estimated GPU memory, bytes.
    pub memory_bytes: u64,
    /// Its effective time limit: the spec's `time_limit`, else the server's default at
    /// submission; `None` for no limit.
    pub time_limit: Option<TimeLimit>,
}

/// One worker start of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct JobRun {
    /// The device it ran on.
    pub device: String,
    /// Unix seconds.
    #[serde(with = "crate::domain::timestamp::unix_seconds")]
    #[schema(value_type = f64)]
    pub started_at: Timestamp,
    /// Unix seconds; absent while running.
    #[serde(with = "crate::domain::timestamp::unix_seconds::option")]
    #[schema(value_type = Option<f64>)]
    pub ended_at: Option<Timestamp>,
    /// How it ended; absent while running.
    pub outcome: Option<RunOutcome>,
}

/// A job's measured epochs, for ETAs.
#[derive(Debug, Clone)]
pub struct EpochTiming {
    /// The job.
    pub id: JobId,
    /// Running or succeeded.
    pub state: JobState,
    /// Its spec.
    pub spec: JobSpec,
    /// Epochs recorded so far.
    pub epochs: u32,
    /// Their mean wall time.
    pub mean_seconds: f64,
}

/// Which jobs a page of the list holds: those in any of `states` (every state when empty), of
/// `owner` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// The states to list; empty lists every state.
    pub states: Vec<JobState>,
    /// Only this user's jobs.
    pub owner: Option<String>,
    /// Also deleted jobs (tombstones); the list hides them unless asked.
    pub include_deleted: bool,
}

/// The way a page runs through submission order (`seq`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PageOrder {
    /// Highest `seq` first: what a student looks for is usually what they just submitted.
    #[default]
    NewestFirst,
    /// Lowest `seq` first: the queue in the order it was submitted.
    OldestFirst,
}

/// One page of the job list.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// At most the asked-for number of jobs, in the page's order.
    pub jobs: Vec<Job>,
    /// The `seq` the next page continues after (the last job's), `None` on the last page. Pages
    /// are keyed by `seq`, not counted by offset, so jobs added between two pages never shift
    /// or repeat a row of the next one.
    pub next_after: Option<i64>,
}

/// A value bound to a page query's placeholder.
enum PageBind {
    Int(i64),
    Text(String),
}

/// The SQL of a page and its bound values. One `SELECT` per state (or one for all states), each
/// walking an index in `seq` order and stopping after `limit` rows; several are merged with
/// `UNION ALL`, which sorts at most `limit` rows per state. `IN (…)` instead would read and sort
/// every job in those states.
fn page_query(filter: &JobFilter, order: PageOrder, after: Option<i64>, limit: u32) -> (String, Vec<PageBind>) {
    let (compare, direction, start) = match order {
        PageOrder::NewestFirst => ("<", "DESC", i64::MAX),
        PageOrder::OldestFirst => (">", "ASC", 0),
    };
    let mut states: Vec<Option<JobState>> = Vec::new();
    for state in &filter.states {
        if !states.contains(&Some(*state)) {
            states.push(Some(*state));
        }
    }
    if states.is_empty() {
        states.push(None);
    }
    let mut binds = Vec::new();
    let mut arms = Vec::new();
    for state in &states {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq {compare} ?");
        binds.push(PageBind::Int(after.unwrap_or(start)));
        if let Some(state) = state {
            sql.push_str(" AND state = ?");
            binds.push(PageBind::Text(state.as_str().to_string()));
        }
        if let Some(owner) = &filter.owner {
            sql.push_str(" AND owner = ?");
            binds.push(PageBind::Text(owner.clone()));
        }
        if !filter.include_deleted {
            sql.push_str(" AND deleted_at IS NULL");
        }
        sql.push_str(&format!(" ORDER BY seq {direction} LIMIT ?"));
        binds.push(PageBind::Int(i64::from(limit)));
        arms.push(sql);
    }
    if arms.len() == 1 {
        return (arms.remove(0), binds);
    }
    let merged = arms.iter().map(|arm| format!("SELECT * FROM ({arm})")).collect::<Vec<_>>().join(" UNION ALL ");
    binds.push(PageBind::Int(i64::from(limit)));
    (format!("{merged} ORDER BY seq {direction} LIMIT ?"), binds)
}

/// Seconds since the Unix epoch, as `job_runs` and `notifications` store time: the clock read
/// through [`Timestamp::now`], so every time trainq writes comes from one place.
pub fn unix_now() -> f64 {
    Timestamp::now().unix_seconds()
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    CancelledWhileQueued,
    /// The job is running; its worker must be stopped.
    StopRunning,
    /// The job had already finished in this state.
    AlreadyFinished(JobState),
    /// No such job.
    NotFound,
}

#[derive(sqlx::FromRow)]
pub(super) struct JobRecord {
    seq: i64,
    id: String,
    name: String,
    state: String,
    spec: String,
    device: Option<String>,
    submitted_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    progress: Option<String>,
    error: Option<String>,
    cancel_requested: bool,
    final_metrics: Option<String>,
    attempts: i64,
    group_id: Option<String>,
    owner: Option<String>,
    priority: i64,
    memory_bytes: i64,
    memory_measured: bool,
    notes: String,
    resume_point: Option<String>,
    parent_id: Option<String>,
    params: Option<String>,
    deleted_at: Option<f64>,
    deleted_by: Option<String>,
    disk_bytes: i64,
    pruned_at: Option<f64>,
    time_limit_seconds: Option<i64>,
}

pub(super) fn corrupt(column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { column, detail: detail.to_string() }
}

fn decode_json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: Option<String>,
) -> Result<Option<T>, StoreError> {
    text.map(|text| serde_json::from_str(&text).map_err(|err| corrupt(column, err))).transpose()
}

/// A stored spec is the validated spec's own JSON; decoded once per row read, so no caller reads
/// it by key.
fn decode_spec(text: &str) -> Result<JobSpec, StoreError> {
    serde_json::from_str(text).map_err(|err| corrupt("spec", err))
}

/// A TEXT time column as RFC 3339 was written (by [`Timestamp::to_rfc3339`]).
fn decode_rfc3339(column: &'static str, text: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse_rfc3339(text).map_err(|err| corrupt(column, err))
}

/// A REAL time column, Unix seconds as written (by [`Timestamp::unix_seconds`]).
fn decode_unix_seconds(column: &'static str, seconds: f64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_seconds(seconds).map_err(|err| corrupt(column, err))
}

fn encode_spec(spec: &JobSpec) -> String {
    serde_json::to_string(spec).expect("specs serialize")
}

impl TryFrom<JobRecord> for Job {
    type Error = StoreError;
    fn try_from(record: JobRecord) -> Result<Job, StoreError> {
        Ok(Job {
            id: record.id.parse().map_err(|err| corrupt("id", err))?,
            seq: record.seq,
            name: record.name,
            state: record.state.parse().map_err(|err| corrupt("state", err))?,
            spec: decode_spec(&record.spec)?,
            device: record.device,
            submitted_at: decode_rfc3339("submitted_at", &record.submitted_at)?,
            started_at: record.started_at.map(|text| decode_rfc3339("started_at", &text)).transpose()?,
            finished_at: record.finished_at.map(|text| decode_rfc3339("finished_at", &text)).transpose()?,
            progress: decode_json::<JobProgress>("progress", record.progress)?,
            error: record.error,
            cancel_requested: record.cancel_requested,
            final_metrics: decode_json::<FinalMetrics>("final_metrics", record.final_metrics)?,
            attempts: record.attempts,
            group_id: record.group_id,
            owner: record.owner,
            priority: record.priority,
            memory_bytes: record.memory_bytes.max(0) as u64,
            memory_measured: record.memory_measured,
            notes: serde_json::from_str(&record.notes).map_err(|err| corrupt("notes", err))?,
            resume_point: decode_json("resume_point", record.resume_point)?,
            parent_id: record.parent_id.map(|id| id.parse().map_err(|err| corrupt("parent_id", err))).transpose()?,
            params: decode_json("params", record.params)?,
            deleted_at: record.deleted_at.map(|seconds| decode_unix_seconds("deleted_at", seconds)).transpose()?,
            deleted_by: record.deleted_by,
            disk_bytes: record.disk_bytes.max(0) as u64,
            pruned_at: record.pruned_at.map(|seconds| decode_unix_seconds("pruned_at", seconds)).transpose()?,
            time_limit: record
                .time_limit_seconds
                .map(|seconds| {
                    u64::try_from(seconds).map_err(|err| corrupt("time_limit_seconds", err)).and_then(|seconds| {
                        TimeLimit::from_seconds(seconds).map_err(|err| corrupt("time_limit_seconds", err))
                    })
                })
                .transpose()?,
        })
    }
}

pub(super) const JOB_COLUMNS: &str = "seq, id, name, state, spec, device, submitted_at, started_at, finished_at, \
                           progress, error, cancel_requested, final_metrics, attempts, group_id, owner, priority, \
                           memory_bytes, memory_measured, notes, resume_point, parent_id, params, \
                           deleted_at, deleted_by, disk_bytes, pruned_at, time_limit_seconds";

/// The most job rows one insert statement carries: a row binds 12 values, and SQLite takes at
/// most 32,766 a statement.
const ROWS_PER_INSERT: usize = 1000;

/// Inserts of up to this many rows are kept prepared (one statement per row count).
const PREPARED_ROW_COUNTS: usize = 16;

/// A connection in a write transaction (the write lock taken at once, within the busy timeout).
pub(super) async fn begin(pool: &sqlx::SqlitePool) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
    let mut connection = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await?;
    Ok(connection)
}

/// Commits the transaction `begin` opened if `result` is a success. On any error, the work's or
/// the `COMMIT`'s (a full disk fails either), it is rolled back there and then: SQLite keeps a
/// transaction whose `COMMIT` failed open, and one left open on a pooled connection holds the
/// write lock past every other writer's busy timeout.
pub(super) async fn finish<T>(
    connection: &mut sqlx::SqliteConnection,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let result = match result {
        Ok(value) => sqlx::query("COMMIT").execute(&mut *connection).await.map(|_| value).map_err(StoreError::from),
        Err(err) => Err(err),
    };
    if result.is_err() {
        // Fails harmlessly when SQLite already rolled the transaction back itself.
        let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
    }
    result
}

/// Inserts accepted jobs as `queued` rows, submitted at `submitted_at`, with what each waits for,
/// on a connection inside a transaction: one multi-row insert per [`ROWS_PER_INSERT`] jobs, so a
/// batch of submissions costs one statement, not one per job. Returns their rows in `jobs`' order;
/// the first error fails the whole call. The one insert of a new job row, whether submitted
/// (`group_commit.rs`) or resumed, always in a transaction of [`begin`] and [`finish`].
///
/// `OR ROLLBACK`: a row that breaks a constraint rolls the whole transaction back at once, which
/// its caller would do anyway. A multi-row `INSERT` that could only abort itself would make SQLite
/// journal every page it touches, to undo the statement alone: under a burst of submissions that
/// statement journal cost 8-21 % of the throughput. `finish` (raw SQL, not an sqlx transaction,
/// whose bookkeeping would not expect SQLite to have rolled back already) tolerates it.
pub(super) async fn insert_job_rows(
    connection: &mut sqlx::SqliteConnection,
    jobs: &[&NewJob],
    submitted_at: &str,
) -> Result<Vec<Job>, StoreError> {
    let mut inserted = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR ROLLBACK INTO jobs (id, name, state, spec, submitted_at, group_id, owner, priority, memory_bytes, \
             parent_id, params, notes, time_limit_seconds) ",
        );
        insert.push_values(chunk, |mut row, job| {
            row.push_bind(job.id.to_string())
                .push_bind(job.name.clone())
                .push("'queued'")
                .push_bind(encode_spec(&job.spec))
                .push_bind(submitted_at.to_string())
                .push_bind(job.group_id.clone())
                .push_bind(job.owner.clone())
                .push_bind(job.priority)
                .push_bind(job.memory_bytes as i64)
                .push_bind(job.parent_id.map(|id| id.to_string()))
                .push_bind(job.params.as_ref().map(|params| serde_json::Value::Object(params.clone()).to_string()))
                .push_bind(serde_json::to_string(&job.notes).expect("strings serialize"))
                .push_bind(job.time_limit.map(|limit| limit.seconds() as i64));
        });
        insert.push(format_args!(" RETURNING {JOB_COLUMNS}"));
        // RETURNING promises no order: the rows are put back in the submissions' by id.
        let mut rows = std::collections::HashMap::with_capacity(chunk.len());
        // sqlx keeps each connection's last 100 statements prepared, keyed by their text, and every
        // row count is a text of its own: the small batches of steady traffic stay prepared; a
        // burst's large ones are prepared for the once, not evicting the scheduler's statements.
        let query = insert.build_query_as::<JobRecord>().persistent(chunk.len() <= PREPARED_ROW_COUNTS);
        for record in query.fetch_all(&mut *connection).await? {
            let job = Job::try_from(record)?;
            rows.insert(job.id, job);
        }
        for job in chunk {
            let row = rows.remove(&job.id).ok_or_else(|| corrupt("id", "an inserted job came back without its row"))?;
            inserted.push(row);
        }
    }
    for job in jobs {
        let waits_for = job.spec.waits_for();
        if !waits_for.is_empty() {
            Store::write_deps(connection, job.id, &waits_for).await?;
        }
    }
    Ok(inserted)
}

/// A resumed job's rows, in the caller's write transaction: the job, the parent's curves up to
/// `point` (the child's first epochs) and the point itself.
async fn insert_resumed_rows(
    connection: &mut sqlx::SqliteConnection,
    job: &NewJob,
    parent: JobId,
    point: &ResumePoint,
) -> Result<Job, StoreError> {
    let inserted = insert_job_rows(connection, &[job], &Timestamp::now().to_rfc3339()).await?.remove(0);
    sqlx::query(
        "INSERT INTO epoch_metrics (job_id, phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds, ran_in_job) \
         SELECT ?, phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds, COALESCE(ran_in_job, job_id) \
         FROM epoch_metrics WHERE job_id = ? AND (phase < ? OR (phase = ? AND epoch <= ?))",
    )
    .bind(job.id.to_string())
    .bind(parent.to_string())
    .bind(point.phase)
    .bind(point.phase)
    .bind(point.epoch)
    .execute(&mut *connection)
    .await?;
    let point_json = serde_json::to_string(point).expect("resume points serialize");
    sqlx::query("UPDATE jobs SET resume_point = ? WHERE id = ?")
        .bind(&point_json)
        .bind(job.id.to_string())
        .execute(&mut *connection)
        .await?;
    Ok(inserted)
}

impl Store {
    /// Inserts accepted jobs as `queued`, all or none (a repeat group is never half-queued), in
    /// the submissions' writer's next transaction together with the others that arrive meanwhile
    /// (`group_commit.rs`); this request's own rows or its own error come back.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Job>, StoreError> {
        self.submissions.insert(jobs.to_vec()).await
    }

    /// Replaces the jobs `id` waits for in `job_deps` with `deps`.
    pub(super) async fn write_deps(
        transaction: &mut sqlx::SqliteConnection,
        id: JobId,
        deps: &[JobId],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM job_deps WHERE job_id = ?").bind(id.to_string()).execute(&mut *transaction).await?;
        for dep in deps {
            sqlx::query("INSERT OR IGNORE INTO job_deps (job_id, after_id) VALUES (?, ?)")
                .bind(id.to_string())
                .bind(dep.to_string())
                .execute(&mut *transaction)
                .await?;
        }
        Ok(())
    }

    /// Replaces a queued job's spec by `spec` (the same with other `after`), and what it waits for
    /// with it. False if it is no longer queued.
    pub async fn set_waits(&self, id: JobId, spec: &JobSpec) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let result = sqlx::query("UPDATE jobs SET spec = ? WHERE id = ? AND state = 'queued'")
            .bind(encode_spec(spec))
            .bind(id.to_string())
            .execute(&mut *transaction)
            .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        Self::write_deps(&mut transaction, id, &spec.waits_for()).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// What the queued jobs among `ids` wait for, by job: one step of a cycle check's walk (one
    /// query per 500 ids, through `job_deps`' primary key).
    pub async fn waits_of_queued(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobId)>, StoreError> {
        let mut edges = Vec::new();
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT d.job_id, d.after_id FROM job_deps d JOIN jobs j ON j.id = d.job_id \
                 WHERE d.job_id IN ({marks}) AND j.state = 'queued'"
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql).persistent(false);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for (job, dep) in query.fetch_all(&self.pool).await? {
                edges.push((
                    job.parse().map_err(|err| corrupt("job_id", err))?,
                    dep.parse().map_err(|err| corrupt("after_id", err))?,
                ));
            }
        }
        Ok(edges)
    }

    /// The jobs of a repeat group, in submission order.
    pub async fn jobs_in_group(&self, group_id: &str) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> =
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE group_id = ? ORDER BY seq"))
                .bind(group_id)
                .fetch_all(&self.pool)
                .await?;
        records.into_iter().map(Job::try_from).collect()
    }

    /// One job.
    pub async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let record: Option<JobRecord> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        record.map(Job::try_from).transpose()
    }

    /// How many queued jobs have a `seq` after `after` and before `before`: a new job's provisional
    /// place, counted over the jobs submitted since the scheduler's last pass (an index range).
    pub async fn queued_between(&self, after: i64, before: i64) -> Result<usize, StoreError> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq > ? AND seq < ?")
                .bind(after)
                .bind(before)
                .fetch_one(&self.pool)
                .await?;
        Ok(count.max(0) as usize)
    }

    /// Queued jobs submitted after the job with `seq`, in submission order: what the scheduler
    /// reads after a burst of submissions, in one indexed query.
    pub async fn queued_after(&self, seq: i64) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> =
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND seq > ? ORDER BY seq"))
                .bind(seq)
                .fetch_all(&self.pool)
                .await?;
        records.into_iter().map(Job::try_from).collect()
    }

    /// The jobs with these ids that exist, in no particular order; one query per 500 ids.
    pub async fn jobs_with_ids(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})");
            // Not kept prepared: every count of ids would be another cached statement.
            let mut query = sqlx::query_as::<_, JobRecord>(&sql).persistent(false);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for record in query.fetch_all(&self.pool).await? {
                jobs.push(Job::try_from(record)?);
            }
        }
        Ok(jobs)
    }

    /// Jobs in submission order, optionally only those in `state`.
    pub async fn jobs(&self, state: Option<JobState>) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> = match state {
            Some(state) => {
                sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq"))
                    .bind(state.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq")).fetch_all(&self.pool).await?
            }
        };
        records.into_iter().map(Job::try_from).collect()
    }

    /// One page of the job list: up to `limit` jobs matching `filter`, in `order`, after the job
    /// with `seq` = `after` (from the start when `None`). Reads about one page of rows through an
    /// index whatever the number of jobs (`migrations/0006_job_pages.sql`).
    pub async fn job_page(
        &self,
        filter: &JobFilter,
        order: PageOrder,
        after: Option<i64>,
        limit: u32,
    ) -> Result<JobPage, StoreError> {
        // One row more than asked says whether there is a next page.
        let (sql, binds) = page_query(filter, order, after, limit.saturating_add(1));
        let mut query = sqlx::query_as::<_, JobRecord>(&sql);
        for bind in binds {
            query = match bind {
                PageBind::Int(value) => query.bind(value),
                PageBind::Text(value) => query.bind(value),
            };
        }
        let mut jobs = query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Job::try_from)
            .collect::<Result<Vec<Job>, StoreError>>()?;
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        let next_after = if more { jobs.last().map(|job| job.seq) } else { None };
        Ok(JobPage { jobs, next_after })
    }

    /// How many jobs are queued and the sum of their `seq`: what the scheduler compares its
    /// queue in memory with, to notice a change it was never told about.
    pub async fn queued_fingerprint(&self) -> Result<(usize, i64), StoreError> {
        let (count, sum): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(seq), 0) FROM jobs WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?;
        Ok((count.max(0) as usize, sum))
    }

    /// Moves a queued job to running on `device`. False when someone else got there first (it was
    /// cancelled meanwhile). Only the scheduler calls this.
    pub async fn claim_job(&self, id: JobId, device: &str) -> Result<bool, StoreError> {
        legal(JobState::Queued, JobState::Running)?;
        let progress =
            serde_json::to_string(&JobProgress { activity: String::from("starting"), ..JobProgress::default() })
                .expect("progress serializes");
        let mut transaction = self.pool.begin().await?;
        let claimed: Option<(Option<String>,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', device = ?, started_at = ?, attempts = attempts + 1, progress = ? \
             WHERE id = ? AND state = 'queued' RETURNING owner",
        )
        .bind(device)
        .bind(Timestamp::now().to_rfc3339())
        .bind(progress)
        .bind(id.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((owner,)) = claimed else { return Ok(false) };
        sqlx::query(
            "INSERT INTO job_runs (job_id, owner, device, started_at) SELECT id, owner, ?, ? FROM jobs WHERE id = ?",
        )
        .bind(device)
        .bind(unix_now())
        .bind(id.to_string())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.totals.moved(owner.as_deref(), Some(JobState::Queued), JobState::Running);
        Ok(true)
    }

    /// Closes a job's open run (if any) with `outcome`.
    async fn close_run(
        transaction: &mut sqlx::SqliteConnection,
        id: &str,
        outcome: RunOutcome,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_runs SET ended_at = ?, outcome = ? WHERE job_id = ? AND ended_at IS NULL")
            .bind(unix_now())
            .bind(outcome.as_str())
            .bind(id)
            .execute(transaction)
            .await?;
        Ok(())
    }

    /// Ends a running job; or fails a queued one (`Failed` only: a job it waits for failed). False
    /// if it was in neither state.
    pub async fn finish_job(&self, id: JobId, state: JobState, error: Option<&str>) -> Result<bool, StoreError> {
        let outcome = match state {
            JobState::Succeeded => RunOutcome::Succeeded,
            JobState::Failed => RunOutcome::Failed,
            JobState::Cancelled => RunOutcome::Cancelled,
            JobState::Timeout => RunOutcome::Timeout,
            // Not an end: `requeue_job` and `claim_job` make those changes.
            JobState::Queued | JobState::Running => {
                return Err(StoreError::IllegalTransition { from: JobState::Running, to: state })
            }
        };
        legal(JobState::Running, state)?;
        // The states it may end from: a queued job only fails (it never ran, so it has no run).
        let from_queued = JobState::Queued.can_become(state);
        let mut transaction = self.pool.begin().await?;
        // The last progress snapshot stays (where it stopped), but no longer claims an activity.
        // Running first, then queued: the running totals need the state it ended from.
        let mut ended = None;
        for from in [JobState::Running, JobState::Queued] {
            if from == JobState::Queued && !from_queued {
                break;
            }
            let owner: Option<(Option<String>,)> = sqlx::query_as(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ?, \
                 progress = CASE WHEN progress IS NULL THEN NULL ELSE json_set(progress, '$.activity', ?) END \
                 WHERE id = ? AND state = ? RETURNING owner",
            )
            .bind(state.as_str())
            .bind(error)
            .bind(Timestamp::now().to_rfc3339())
            .bind(state.as_str())
            .bind(id.to_string())
            .bind(from.as_str())
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some((owner,)) = owner {
                ended = Some((owner, from));
                break;
            }
        }
        let Some((owner, from)) = ended else { return Ok(false) };
        Self::close_run(&mut transaction, &id.to_string(), outcome).await?;
        super::notifications::enqueue_for_end(&mut transaction, &id.to_string()).await?;
        transaction.commit().await?;
        self.totals.moved(owner.as_deref(), Some(from), state);
        Ok(true)
    }

    /// Running jobs handed to Slurm: (job, Slurm job id), for re-attaching after a restart.
    pub async fn running_elsewhere(&self) -> Result<Vec<(Job, String)>, StoreError> {
        use sqlx::{FromRow, Row};
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS}, executor_ref FROM jobs WHERE state = 'running' AND executor_ref IS NOT NULL ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((Job::try_from(JobRecord::from_row(row)?)?, row.try_get("executor_ref")?))).collect()
    }

    /// Puts a running job back in the queue (keeping its place), closing its run with `outcome`:
    /// `interrupted` when the server stops, `requeued` after running out of memory, `storage`
    /// after a full disk. `spec` replaces the stored spec (the halved batch), `note` is appended
    /// to its notes. False if it was not running.
    pub async fn requeue_job(
        &self,
        id: JobId,
        outcome: RunOutcome,
        spec: Option<&JobSpec>,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        legal(JobState::Running, outcome.job_state())?;
        if outcome.job_state() != JobState::Queued {
            return Err(StoreError::IllegalTransition { from: JobState::Running, to: outcome.job_state() });
        }
        let mut transaction = self.pool.begin().await?;
        let requeued: Option<(Option<String>,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'queued', device = NULL, progress = NULL, \
             spec = COALESCE(?, spec), \
             notes = CASE WHEN ? IS NULL THEN notes ELSE json_insert(notes, '$[#]', ?) END, \
             oom_retried = oom_retried OR ?, \
             resume_point = CASE WHEN ? THEN NULL ELSE resume_point END, executor_ref = NULL, worker_secret_sha256 = NULL \
             WHERE id = ? AND state = 'running' AND cancel_requested = 0 RETURNING owner",
        )
        .bind(spec.map(encode_spec))
        .bind(note)
        .bind(note)
        .bind(outcome == RunOutcome::Requeued)
        .bind(spec.is_some())
        .bind(id.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some((owner,)) = requeued else { return Ok(false) };
        Self::close_run(&mut transaction, &id.to_string(), outcome).await?;
        transaction.commit().await?;
        self.totals.moved(owner.as_deref(), Some(JobState::Running), JobState::Queued);
        Ok(true)
    }

    /// How many of a job's runs ended because the disk refused a write.
    pub async fn storage_faults(&self, id: JobId) -> Result<u32, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM job_runs WHERE job_id = ? AND outcome = ?")
            .bind(id.to_string())
            .bind(RunOutcome::Storage.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u32)
    }

    /// Whether a job was already re-queued once after running out of memory.
    pub async fn oom_retried(&self, id: JobId) -> Result<bool, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as("SELECT oom_retried FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some_and(|(retried,)| retried))
    }

    /// Records how far a running job's resumable checkpoint reaches.
    pub async fn set_resume_point(&self, id: JobId, point: ResumePoint) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET resume_point = ? WHERE id = ?")
            .bind(serde_json::to_string(&point).expect("resume points serialize"))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces a job's memory estimate with a measurement.
    pub async fn set_measured_memory(&self, id: JobId, bytes: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET memory_bytes = ?, memory_measured = 1 WHERE id = ?")
            .bind(bytes as i64)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Jobs of `owner` still waiting or running: what the per-user queue limit counts.
    pub async fn active_jobs_of(&self, owner: &str) -> Result<i64, StoreError> {
        // From the running totals: a submission's cap check costs the same at any queue length.
        Ok(self.totals.of_owner(owner, &[JobState::Queued, JobState::Running]))
    }

    /// Every run that ended after `since` (Unix seconds) or is still going: (owner, start, end).
    /// Fair share turns them into decayed device-seconds per user.
    pub async fn runs_since(&self, since: f64) -> Result<Vec<(Option<String>, f64, Option<f64>)>, StoreError> {
        Ok(sqlx::query_as("SELECT owner, started_at, ended_at FROM job_runs WHERE ended_at IS NULL OR ended_at >= ?")
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Measured epochs of running jobs and of the 500 latest succeeded ones: (job id, state,
    /// spec, epochs recorded, mean seconds per epoch). What queue ETAs are estimated from.
    pub async fn epoch_timings(&self) -> Result<Vec<EpochTiming>, StoreError> {
        let rows: Vec<(String, String, String, i64, f64)> = sqlx::query_as(
            "SELECT j.id, j.state, j.spec, COUNT(*), AVG(m.seconds) FROM jobs j JOIN epoch_metrics m ON m.job_id = j.id \
             WHERE j.state = 'running' OR j.seq IN (SELECT seq FROM jobs WHERE state = 'succeeded' ORDER BY seq DESC LIMIT 500) \
             GROUP BY j.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, state, spec, epochs, seconds)| {
                Ok(EpochTiming {
                    id: id.parse().map_err(|err| corrupt("id", err))?,
                    state: state.parse().map_err(|err| corrupt("state", err))?,
                    spec: decode_spec(&spec)?,
                    epochs: epochs.max(0) as u32,
                    mean_seconds: seconds,
                })
            })
            .collect()
    }

    /// Records where a claimed job was handed (its Slurm job id) and the hash of the secret its
    /// relay reports with.
    pub async fn set_executor_ref(&self, id: JobId, executor_ref: &str, secret: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET executor_ref = ?, worker_secret_sha256 = ? WHERE id = ?")
            .bind(executor_ref)
            .bind(crate::domain::user::token_hash(secret))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The Slurm job id of a job handed to Slurm.
    pub async fn executor_ref(&self, id: JobId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT executor_ref FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|(reference,)| reference))
    }

    /// Whether `secret` is the reporting secret of job `id`.
    pub async fn worker_secret_matches(&self, id: JobId, secret: &str) -> Result<bool, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT worker_secret_sha256 FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|(hash,)| hash).is_some_and(|hash| hash == crate::domain::user::token_hash(secret)))
    }

    /// The highest `seq` a job has been given (0 before the first): where a server starting over
    /// a history counts the jobs its scheduler has not placed yet from.
    pub async fn highest_seq(&self) -> Result<i64, StoreError> {
        let (seq,): (i64,) =
            sqlx::query_as("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0)")
                .fetch_one(&self.pool)
                .await?;
        Ok(seq)
    }

    /// Job counts by owner and state: (owner, state, count), ordered by owner and state, from the
    /// running totals (`job_totals.rs`): no table count per call.
    pub async fn job_counts(&self) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
        Ok(self.totals.snapshot())
    }

    /// The same counts over the table, to check the running totals against.
    #[cfg(test)]
    pub(super) async fn job_counts_by_query(&self) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
        super::job_totals::counted_by_query(&self.pool).await
    }

    /// A job's runs in order: (device, start, end, outcome), Unix seconds.
    pub async fn runs_of(&self, id: JobId) -> Result<Vec<JobRun>, StoreError> {
        let rows: Vec<(String, f64, Option<f64>, Option<String>)> =
            sqlx::query_as("SELECT device, started_at, ended_at, outcome FROM job_runs WHERE job_id = ? ORDER BY id")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(device, started_at, ended_at, outcome)| {
                let outcome =
                    outcome.map(|text| text.parse().map_err(|err: String| corrupt("outcome", err))).transpose()?;
                let started_at = decode_unix_seconds("started_at", started_at)?;
                let ended_at = ended_at.map(|seconds| decode_unix_seconds("ended_at", seconds)).transpose()?;
                Ok(JobRun { device, started_at, ended_at, outcome })
            })
            .collect()
    }

    /// The device time job `id` has used over all its runs, in seconds, its current run (if
    /// any) counted up to now: what its time limit is measured against. Re-queues (out of
    /// memory, a full disk, a restart) start new runs, so they never reset it. One indexed read
    /// of the job's own runs (`job_runs_by_job`).
    pub async fn device_seconds_used(&self, id: JobId) -> Result<f64, StoreError> {
        let (seconds,): (Option<f64>,) =
            sqlx::query_as("SELECT SUM(MAX(0.0, COALESCE(ended_at, ?) - started_at)) FROM job_runs WHERE job_id = ?")
                .bind(unix_now())
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(seconds.unwrap_or(0.0))
    }

    /// Cancels a queued job at once, or marks a running one for stopping.
    pub async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        legal(JobState::Queued, JobState::Cancelled)?;
        let mut transaction = self.pool.begin().await?;
        let cancelled: Option<(Option<String>,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, cancel_requested = 1 WHERE id = ? AND state = 'queued' \
             RETURNING owner",
        )
        .bind(Timestamp::now().to_rfc3339())
        .bind(id.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some((owner,)) = cancelled {
            super::notifications::enqueue_for_end(&mut transaction, &id.to_string()).await?;
            transaction.commit().await?;
            self.totals.moved(owner.as_deref(), Some(JobState::Queued), JobState::Cancelled);
            return Ok(CancelOutcome::CancelledWhileQueued);
        }
        drop(transaction);
        let marked = sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if marked.rows_affected() == 1 {
            return Ok(CancelOutcome::StopRunning);
        }
        Ok(match self.job(id).await? {
            Some(job) => CancelOutcome::AlreadyFinished(job.state),
            None => CancelOutcome::NotFound,
        })
    }

    /// Puts every job left `running` by a dead server back in the queue, keeping its place.
    pub async fn requeue_running(&self) -> Result<Vec<JobId>, StoreError> {
        legal(JobState::Running, JobState::Cancelled)?;
        legal(JobState::Running, JobState::Queued)?;
        let mut transaction = self.pool.begin().await?;
        // A cancel that was under way when the server died is honoured now.
        let cancelled: Vec<(String, Option<String>)> = sqlx::query_as(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, \
             progress = CASE WHEN progress IS NULL THEN NULL ELSE json_set(progress, '$.activity', 'cancelled') END \
             WHERE state = 'running' AND cancel_requested = 1 RETURNING id, owner",
        )
        .bind(Timestamp::now().to_rfc3339())
        .fetch_all(&mut *transaction)
        .await?;
        for (cancelled_id, _) in &cancelled {
            super::notifications::enqueue_for_end(&mut transaction, cancelled_id).await?;
        }
        // Jobs handed to Slurm keep running there without us: they are re-attached, not re-queued.
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "UPDATE jobs SET state = 'queued', device = NULL, progress = NULL \
             WHERE state = 'running' AND executor_ref IS NULL RETURNING id, owner",
        )
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query(
            "UPDATE job_runs SET ended_at = ?, \
             outcome = CASE WHEN (SELECT state FROM jobs WHERE jobs.id = job_runs.job_id) = 'cancelled' THEN 'cancelled' ELSE 'interrupted' END \
             WHERE ended_at IS NULL AND (SELECT state FROM jobs WHERE jobs.id = job_runs.job_id) != 'running'",
        )
        .bind(unix_now())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        for (_, owner) in &cancelled {
            self.totals.moved(owner.as_deref(), Some(JobState::Running), JobState::Cancelled);
        }
        for (_, owner) in &rows {
            self.totals.moved(owner.as_deref(), Some(JobState::Running), JobState::Queued);
        }
        rows.into_iter().map(|(id, _)| id.parse().map_err(|err| corrupt("id", err))).collect()
    }

    /// Stores the latest progress snapshot of a running job.
    pub async fn set_progress(&self, id: JobId, progress: &JobProgress) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'")
            .bind(serde_json::to_string(progress).expect("progress serializes"))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a finished epoch (replacing a row from an earlier attempt of the same epoch).
    pub async fn record_epoch(&self, id: JobId, metrics: &EpochMetrics) -> Result<(), StoreError> {
        sqlx::query(
            // An upsert, not a replace: a resumed child's worker sends its parent's epochs again,
            // which must keep saying whose run trained them (`ran_in_job`).
            "INSERT INTO epoch_metrics (job_id, phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (job_id, phase, epoch) DO UPDATE SET train_loss = excluded.train_loss, \
             train_acc = excluded.train_acc, val_loss = excluded.val_loss, val_acc = excluded.val_acc, \
             seconds = excluded.seconds",
        )
        .bind(id.to_string())
        .bind(metrics.phase)
        .bind(metrics.epoch)
        .bind(metrics.train_loss)
        .bind(metrics.train_acc)
        .bind(metrics.val_loss)
        .bind(metrics.val_acc)
        .bind(metrics.seconds)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the final evaluation.
    pub async fn set_final_metrics(&self, id: JobId, metrics: &FinalMetrics) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET final_metrics = ? WHERE id = ?")
            .bind(serde_json::to_string(metrics).expect("metrics serialize"))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job's curves as [`Store::epoch_metrics`] has them, each with the job whose run trained
    /// it when that is not this job (a resumed child's epochs from before its checkpoint).
    pub async fn epoch_metrics_with_origin(&self, id: JobId) -> Result<Vec<(EpochMetrics, Option<JobId>)>, StoreError> {
        let rows: Vec<EpochRowWithOrigin> = sqlx::query_as(
            "SELECT phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds, ran_in_job FROM epoch_metrics \
             WHERE job_id = ? ORDER BY phase, epoch",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds, ran_in_job)| {
                let origin = ran_in_job.map(|job| job.parse().map_err(|err| corrupt("ran_in_job", err))).transpose()?;
                Ok((EpochMetrics { phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds }, origin))
            })
            .collect()
    }

    /// Inserts a job that resumes `parent` from its checkpoint at `point`, in one transaction: the
    /// job (with `point` as its resume point), what it waits for, and the parent's epochs up to
    /// the checkpoint, each marked with the job whose run trained it, so the child's curves hold
    /// every epoch exactly once. Its worker then continues from the checkpoint file the caller
    /// put in its folder.
    pub async fn insert_resumed(&self, job: &NewJob, parent: JobId, point: ResumePoint) -> Result<Job, StoreError> {
        let mut connection = begin(&self.pool).await?;
        let result = insert_resumed_rows(&mut connection, job, parent, &point).await;
        let inserted = finish(&mut connection, result).await?;
        self.totals.moved(job.owner.as_deref(), None, JobState::Queued);
        Ok(Job { resume_point: Some(point), ..inserted })
    }

    /// A job's curves, in phase and epoch order.
    pub async fn epoch_metrics(&self, id: JobId) -> Result<Vec<EpochMetrics>, StoreError> {
        let rows: Vec<EpochRow> = sqlx::query_as(
            "SELECT phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds FROM epoch_metrics \
             WHERE job_id = ? ORDER BY phase, epoch",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(phase, epoch, train_loss, train_acc, val_loss, val_acc, seconds)| EpochMetrics {
                phase,
                epoch,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                seconds,
            })
            .collect())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, store)
    }

    pub(in crate::store) fn test_spec() -> JobSpec {
        JobSpec::parse(
            br#"{"dataset": "d", "backbone": "vgg16", "image_size": 32, "batch_size": 4, "head": ["gap", {"dense": 1}],
                            "phases": [{"epochs": 1, "train": "head"}], "optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap()
    }

    async fn queued(store: &Store) -> Job {
        queued_by(store, "alice").await
    }

    pub(in crate::store) async fn queued_by(store: &Store, owner: &str) -> Job {
        queued_with(store, owner, test_spec()).await
    }

    /// A queued job of `owner` with `spec`.
    pub(in crate::store) async fn queued_with(store: &Store, owner: &str, spec: JobSpec) -> Job {
        let job = NewJob { owner: Some(owner.to_string()), ..queued_new(spec) };
        store.insert_jobs(&[job]).await.unwrap().remove(0)
    }

    /// What a submission of `spec` by `alice` inserts, with no time limit.
    pub(in crate::store) fn queued_new(spec: JobSpec) -> NewJob {
        NewJob {
            id: JobId::new(),
            name: spec.name.clone(),
            spec,
            group_id: None,
            parent_id: None,
            params: None,
            notes: Vec::new(),
            owner: Some(String::from("alice")),
            priority: 0,
            memory_bytes: 1,
            time_limit: None,
        }
    }

    #[tokio::test]
    async fn a_job_is_claimed_once() {
        let (_dir, store) = store().await;
        let job = queued(&store).await;
        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
        assert!(!store.claim_job(job.id, "cpu1").await.unwrap());
        let job = store.job(job.id).await.unwrap().unwrap();
        assert_eq!((job.state, job.device.as_deref(), job.attempts), (JobState::Running, Some("cpu0"), 1));
        assert!(store.finish_job(job.id, JobState::Succeeded, None).await.unwrap());
        assert!(!store.finish_job(job.id, JobState::Failed, None).await.unwrap(), "finished once");
        let job = store.job(job.id).await.unwrap().unwrap();
        assert_eq!(job.progress.unwrap().activity, "succeeded");
    }

    #[tokio::test]
    async fn a_time_limit_is_stored_and_device_time_adds_up_over_runs() {
        let (_dir, store) = store().await;
        let limit = TimeLimit::parse("90m").unwrap();
        let job = NewJob { time_limit: Some(limit), ..queued_new(test_spec()) };
        let job = store.insert_jobs(&[job]).await.unwrap().remove(0);
        assert_eq!(job.time_limit, Some(limit), "written at insert and read back");
        assert_eq!(store.job(job.id).await.unwrap().unwrap().time_limit, Some(limit));
        assert_eq!(store.device_seconds_used(job.id).await.unwrap(), 0.0, "no run yet");
        // Two runs: one re-queued after 30 s, one still going for about 10 s.
        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
        assert!(store.requeue_job(job.id, RunOutcome::Storage, None, None).await.unwrap());
        assert!(store.claim_job(job.id, "cpu0").await.unwrap());
        let now = unix_now();
        sqlx::query("UPDATE job_runs SET started_at = ?, ended_at = ? WHERE job_id = ? AND ended_at IS NOT NULL")
            .bind(now - 100.0)
            .bind(now - 70.0)
            .bind(job.id.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE job_runs SET started_at = ? WHERE job_id = ? AND ended_at IS NULL")
            .bind(now - 10.0)
            .bind(job.id.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        let used = store.device_seconds_used(job.id).await.unwrap();
        assert!((40.0..41.0).contains(&used), "a re-queue does not reset it: {used}");
        assert!(store.finish_job(job.id, JobState::Timeout, Some("time limit 90m reached")).await.unwrap());
        let ended = store.job(job.id).await.unwrap().unwrap();
        assert_eq!((ended.state, ended.error.as_deref()), (JobState::Timeout, Some("time limit 90m reached")));
        let outcomes: Vec<_> = store.runs_of(job.id).await.unwrap().iter().map(|run| run.outcome).collect();
        assert_eq!(outcomes, [Some(RunOutcome::Storage), Some(RunOutcome::Timeout)]);
        let unlimited = queued(&store).await;
        assert_eq!(unlimited.time_limit, None, "no limit unless one was given");
    }

    /// A job brought to `state` through the store's own legal changes.
    async fn in_state(store: &Store, state: JobState) -> Job {
        in_state_of(store, state, "alice").await
    }

    /// A job of `owner` brought to `state` likewise.
    async fn in_state_of(store: &Store, state: JobState, owner: &str) -> Job {
        let job = queued_by(store, owner).await;
        match state {
            JobState::Queued => {}
            JobState::Running => assert!(store.claim_job(job.id, "cpu0").await.unwrap()),
            JobState::Cancelled => {
                assert_eq!(store.request_cancel(job.id).await.unwrap(), CancelOutcome::CancelledWhileQueued)
            }
            terminal => {
                assert!(store.claim_job(job.id, "cpu0").await.unwrap());
                assert!(store.finish_job(job.id, terminal, None).await.unwrap());
            }
        }
        store.job(job.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn every_state_change_the_store_makes_is_one_the_state_machine_allows() {
        let (_dir, store) = store().await;
        for from in JobState::ALL {
            for to in JobState::ALL {
                let job = in_state(&store, from).await;
                assert_eq!(job.state, from);
                // The store's one way to each state.
                let changed = match to {
                    JobState::Queued => store.requeue_job(job.id, RunOutcome::Interrupted, None, None).await.unwrap(),
                    JobState::Running => store.claim_job(job.id, "cpu1").await.unwrap(),
                    JobState::Cancelled if from == JobState::Queued => {
                        store.request_cancel(job.id).await.unwrap() == CancelOutcome::CancelledWhileQueued
                    }
                    terminal => store.finish_job(job.id, terminal, None).await.unwrap(),
                };
                let now = store.job(job.id).await.unwrap().unwrap().state;
                assert_eq!(changed, from.can_become(to), "{from} -> {to}");
                assert_eq!(now, if changed { to } else { from }, "{from} -> {to}");
            }
        }
        // What no state change may be: an end that is not final, a re-queue that is an end.
        let running = in_state(&store, JobState::Running).await;
        for state in [JobState::Queued, JobState::Running] {
            assert!(matches!(
                store.finish_job(running.id, state, None).await,
                Err(StoreError::IllegalTransition { .. })
            ));
        }
        assert!(matches!(
            store.requeue_job(running.id, RunOutcome::Failed, None, None).await,
            Err(StoreError::IllegalTransition { .. })
        ));
        assert_eq!(store.job(running.id).await.unwrap().unwrap().state, JobState::Running);
        // Every run closed by those changes has an outcome the CHECK constraint knows.
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_run_outcome_outside_the_set_is_refused_by_the_database() {
        let (_dir, store) = store().await;
        let job = in_state(&store, JobState::Running).await;
        let refused = sqlx::query("UPDATE job_runs SET ended_at = 1, outcome = 'done' WHERE job_id = ?")
            .bind(job.id.to_string())
            .execute(&store.pool)
            .await;
        assert!(refused.is_err(), "the CHECK constraint refuses unknown outcomes");
        assert!(store.requeue_job(job.id, RunOutcome::Storage, None, Some("disk full")).await.unwrap());
        assert_eq!(store.storage_faults(job.id).await.unwrap(), 1);
        let runs = store.runs_of(job.id).await.unwrap();
        assert_eq!(runs.iter().map(|run| run.outcome).collect::<Vec<_>>(), [Some(RunOutcome::Storage)]);
    }

    #[tokio::test]
    async fn cancel_depends_on_state() {
        let (_dir, store) = store().await;
        let waiting = queued(&store).await;
        let running = queued(&store).await;
        let found = store.jobs_with_ids(&[running.id, waiting.id, JobId::new()]).await.unwrap();
        assert_eq!(found.len(), 2, "unknown ids are left out");
        store.claim_job(running.id, "cpu0").await.unwrap();
        assert_eq!(store.request_cancel(waiting.id).await.unwrap(), CancelOutcome::CancelledWhileQueued);
        assert!(!store.claim_job(waiting.id, "cpu0").await.unwrap(), "a cancelled job is never claimed");
        assert_eq!(store.request_cancel(running.id).await.unwrap(), CancelOutcome::StopRunning);
        store.finish_job(running.id, JobState::Cancelled, None).await.unwrap();
        assert_eq!(
            store.request_cancel(running.id).await.unwrap(),
            CancelOutcome::AlreadyFinished(JobState::Cancelled)
        );
        assert_eq!(store.request_cancel(JobId::new()).await.unwrap(), CancelOutcome::NotFound);
    }

    #[tokio::test]
    async fn running_jobs_are_requeued_after_a_restart() {
        let (dir, store) = store().await;
        let job = queued(&store).await;
        store.claim_job(job.id, "cpu0").await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.requeue_running().await.unwrap(), vec![job.id]);
        let job = store.job(job.id).await.unwrap().unwrap();
        assert_eq!((job.state, job.device), (JobState::Queued, None));
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_group_is_inserted_whole_or_not_at_all() {
        let (_dir, store) = store().await;
        let member = |id: JobId| NewJob {
            id,
            name: String::from("r"),
            spec: test_spec(),
            group_id: Some(String::from("g1")),
            parent_id: None,
            params: None,
            notes: Vec::new(),
            owner: None,
            priority: 0,
            memory_bytes: 0,
            time_limit: None,
        };
        let jobs = store.insert_jobs(&[member(JobId::new()), member(JobId::new())]).await.unwrap();
        assert_eq!(store.jobs_in_group("g1").await.unwrap().len(), 2);
        // A duplicate id fails the second insert; the first of that batch must not stay behind.
        let failing = [member(JobId::new()), member(jobs[0].id)];
        assert!(store.insert_jobs(&failing).await.is_err());
        assert_eq!(store.jobs(None).await.unwrap().len(), 2);
    }

    /// Twelve jobs of alice and bob in every state but `failed`.
    async fn mixed_jobs(store: &Store) {
        let states = [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Cancelled];
        for n in 0..12 {
            in_state_of(store, states[n % states.len()], if n % 3 == 0 { "bob" } else { "alice" }).await;
        }
    }

    /// Every page of a listing, followed from the first to the last.
    async fn walk(store: &Store, filter: &JobFilter, order: PageOrder, limit: u32) -> Vec<i64> {
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let page = store.job_page(filter, order, after, limit).await.unwrap();
            assert!(page.jobs.len() <= limit as usize);
            seen.extend(page.jobs.iter().map(|job| job.seq));
            match page.next_after {
                Some(next) => after = Some(next),
                None => return seen,
            }
        }
    }

    #[tokio::test]
    async fn pages_list_every_matching_job_once_in_order() {
        let (_dir, store) = store().await;
        mixed_jobs(&store).await;
        let all = store.jobs(None).await.unwrap();
        let filters = [
            JobFilter::default(),
            JobFilter { states: vec![JobState::Queued], owner: None, include_deleted: false },
            JobFilter {
                states: vec![JobState::Queued, JobState::Running, JobState::Queued],
                owner: None,
                include_deleted: false,
            },
            JobFilter { states: vec![], owner: Some(String::from("bob")), include_deleted: false },
            JobFilter {
                states: vec![JobState::Succeeded, JobState::Cancelled],
                owner: Some(String::from("alice")),
                include_deleted: false,
            },
            JobFilter { states: vec![JobState::Failed], owner: None, include_deleted: false },
        ];
        for filter in &filters {
            let mut expected: Vec<i64> = all
                .iter()
                .filter(|job| filter.states.is_empty() || filter.states.contains(&job.state))
                .filter(|job| filter.owner.is_none() || job.owner == filter.owner)
                .map(|job| job.seq)
                .collect();
            for limit in [1, 2, 5, 500] {
                assert_eq!(
                    walk(&store, filter, PageOrder::OldestFirst, limit).await,
                    expected,
                    "{filter:?} by {limit}"
                );
            }
            expected.reverse();
            for limit in [1, 3, 500] {
                assert_eq!(
                    walk(&store, filter, PageOrder::NewestFirst, limit).await,
                    expected,
                    "{filter:?} by {limit}"
                );
            }
        }
        // A page that ends exactly at the last job says there is no next one.
        let page = store.job_page(&JobFilter::default(), PageOrder::NewestFirst, None, all.len() as u32).await.unwrap();
        assert_eq!((page.jobs.len(), page.next_after), (all.len(), None));
    }

    #[tokio::test]
    async fn every_shape_of_page_query_walks_an_index_in_seq_order() {
        let (_dir, store) = store().await;
        mixed_jobs(&store).await;
        let owner = Some(String::from("alice"));
        let shapes = [
            JobFilter::default(),
            JobFilter { states: vec![JobState::Queued], owner: None, include_deleted: false },
            JobFilter { states: vec![JobState::Queued, JobState::Running], owner: None, include_deleted: false },
            JobFilter { states: vec![], owner: owner.clone(), include_deleted: false },
            JobFilter { states: vec![JobState::Succeeded], owner: owner.clone(), include_deleted: false },
            JobFilter { states: vec![JobState::Queued, JobState::Running], owner, include_deleted: false },
        ];
        for filter in &shapes {
            for order in [PageOrder::NewestFirst, PageOrder::OldestFirst] {
                for after in [None, Some(5)] {
                    let (sql, binds) = page_query(filter, order, after, 51);
                    let explain = format!("EXPLAIN QUERY PLAN {sql}");
                    let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
                    for bind in binds {
                        query = match bind {
                            PageBind::Int(value) => query.bind(value),
                            PageBind::Text(value) => query.bind(value),
                        };
                    }
                    let plan: Vec<String> =
                        query.fetch_all(&store.pool).await.unwrap().into_iter().map(|row| row.3).collect();
                    let shape = format!("{filter:?} {order:?} after {after:?}: {plan:#?}");
                    // Every read of `jobs` is a search by an index or the primary key, never a scan.
                    assert!(plan.iter().any(|step| step.starts_with("SEARCH jobs USING")), "{shape}");
                    assert!(!plan.iter().any(|step| step.starts_with("SCAN jobs")), "{shape}");
                    // Rows come in `seq` order from the index: only a merge of states sorts, and
                    // then one page per state.
                    if filter.states.len() < 2 {
                        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "{shape}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn epochs_are_kept_once_in_order() {
        let (_dir, store) = store().await;
        let job = queued(&store).await;
        for (phase, epoch, loss) in [(2, 1, 0.5), (1, 2, 0.7), (1, 1, 0.9), (1, 2, 0.6)] {
            let metrics = EpochMetrics {
                phase,
                epoch,
                train_loss: loss,
                train_acc: 0.5,
                val_loss: None,
                val_acc: None,
                seconds: 1.0,
            };
            store.record_epoch(job.id, &metrics).await.unwrap();
        }
        let curve: Vec<(u32, u32, f64)> =
            store.epoch_metrics(job.id).await.unwrap().iter().map(|m| (m.phase, m.epoch, m.train_loss)).collect();
        assert_eq!(curve, [(1, 1, 0.9), (1, 2, 0.6), (2, 1, 0.5)]);
    }
}
