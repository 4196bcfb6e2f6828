//! Group commit of submissions: one writer task inserts every submission's jobs, and the
//! submissions that arrive while it commits go into its next transaction together. A burst of a
//! class's submissions costs one commit per batch instead of one per job, and SQLite's write lock
//! changes hands once per batch instead of once per job.
//!
//! A batch's jobs go in as one multi-row insert (`BEGIN`, one `INSERT … RETURNING` per thousand
//! rows, `COMMIT`): each statement is a round trip to SQLite's thread, and per-submission
//! savepoints cost two more round trips a submission for a failure that almost never comes.
//!
//! Each submission still keeps its own answer. When anything fails — a row (a constraint, a value
//! that does not decode) or the transaction itself (its `BEGIN` or `COMMIT`, a full disk, an I/O
//! error) — the batch is rolled back whole and every submission of it is tried again alone, so a
//! failing row answers only its own request, each request gets the error its own write meets (a
//! full disk answers each `507`) and nothing is half-written. The writer never stops on an error;
//! it ends when the last handle to the store is dropped.
//!
//! The scheduler's claims and the supervisor's state writes keep out of its way through SQLite's
//! own lock (the busy timeout): a batch holds at most [`MOST_SUBMISSIONS_PER_BATCH`] submissions,
//! so the lock is never held for more than a few milliseconds at a time.

use super::jobs::{begin, finish, insert_job_rows};
use super::{JobTotals, StoreError};
use crate::domain::{Job, JobState, Timestamp};
use crate::store::NewJob;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

/// The most submissions one transaction holds: what keeps a batch's hold on the write lock short.
const MOST_SUBMISSIONS_PER_BATCH: usize = 256;

/// How many submissions may wait for the writer before a request waits to hand its own over.
const WAITING_SUBMISSIONS: usize = 4096;

/// One submission handed to the writer: its jobs (all or none) and where its answer goes.
struct Submission {
    jobs: Vec<NewJob>,
    answer: oneshot::Sender<Result<Vec<Job>, StoreError>>,
}

/// The handle through which requests hand submissions to the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct SubmissionWriter {
    submissions: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Submission").field("jobs", &self.jobs.len()).finish()
    }
}

impl SubmissionWriter {
    /// Starts the writer task over `pool`; it keeps `totals` in step with what it inserts.
    pub(super) fn start(pool: SqlitePool, totals: JobTotals) -> SubmissionWriter {
        let (submissions, receiver) = mpsc::channel(WAITING_SUBMISSIONS);
        tokio::spawn(write_submissions(pool, totals, receiver));
        SubmissionWriter { submissions }
    }

    /// Inserts `jobs` as `queued`, all or none, in the writer's next batch; returns their rows.
    pub(super) async fn insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Database(sqlx::Error::WorkerCrashed);
        self.submissions.send(Submission { jobs, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer task: takes every submission waiting (at least one, at most a batch) and commits
/// them together, until every sender is gone.
async fn write_submissions(pool: SqlitePool, totals: JobTotals, mut receiver: mpsc::Receiver<Submission>) {
    let mut batch = Vec::with_capacity(MOST_SUBMISSIONS_PER_BATCH);
    while receiver.recv_many(&mut batch, MOST_SUBMISSIONS_PER_BATCH).await > 0 {
        commit_batch(&pool, &totals, std::mem::take(&mut batch)).await;
    }
}

/// Commits one batch and answers each of its submissions. A request that went away before its
/// turn (its client hung up) is not inserted: nobody was told it was accepted.
async fn commit_batch(pool: &SqlitePool, totals: &JobTotals, batch: Vec<Submission>) {
    let batch: Vec<Submission> = batch.into_iter().filter(|submission| !submission.answer.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let answers = match insert_together(pool, &batch).await {
        Ok(rows) => rows.into_iter().map(Ok).collect(),
        Err(err) => {
            tracing::warn!(error = ?err, submissions = batch.len(), "a batch of submissions failed; trying each alone");
            let mut answers = Vec::with_capacity(batch.len());
            for submission in &batch {
                answers.push(insert_alone(pool, &submission.jobs).await);
            }
            answers
        }
    };
    for (submission, answer) in batch.into_iter().zip(answers) {
        if let Ok(jobs) = &answer {
            for job in jobs {
                totals.moved(job.owner.as_deref(), None, JobState::Queued);
            }
        }
        // A request that hung up meanwhile was accepted all the same: its jobs stay queued.
        let _ = submission.answer.send(answer);
    }
}

/// Inserts a batch in one transaction: each submission's rows, or the error that failed it.
async fn insert_together(pool: &SqlitePool, batch: &[Submission]) -> Result<Vec<Vec<Job>>, StoreError> {
    let submitted_at = Timestamp::now().to_rfc3339();
    let mut connection = begin(pool).await?;
    let jobs: Vec<&NewJob> = batch.iter().flat_map(|submission| &submission.jobs).collect();
    let result = insert_job_rows(&mut connection, &jobs, &submitted_at).await;
    let mut rows = finish(&mut connection, result).await?.into_iter();
    Ok(batch.iter().map(|submission| rows.by_ref().take(submission.jobs.len()).collect()).collect())
}

/// Inserts one submission in a transaction of its own.
async fn insert_alone(pool: &SqlitePool, jobs: &[NewJob]) -> Result<Vec<Job>, StoreError> {
    let mut connection = begin(pool).await?;
    let jobs: Vec<&NewJob> = jobs.iter().collect();
    let result = insert_job_rows(&mut connection, &jobs, &Timestamp::now().to_rfc3339()).await;
    finish(&mut connection, result).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::tests::{queued_new, store, test_spec};
    use crate::store::Store;

    /// A submission for the writer, and the receiver of its answer.
    fn submission(jobs: Vec<NewJob>) -> (Submission, oneshot::Receiver<Result<Vec<Job>, StoreError>>) {
        let (answer, answered) = oneshot::channel();
        (Submission { jobs, answer }, answered)
    }

    #[tokio::test]
    async fn concurrent_submissions_all_land_with_distinct_ids_in_the_order_they_were_handed_over() {
        let (_dir, store) = store().await;
        let mut handed_over = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..300 {
            // Every fifth submission is a group of three, which must stay together.
            let jobs: Vec<NewJob> = (0..if index % 5 == 0 { 3 } else { 1 }).map(|_| queued_new(test_spec())).collect();
            handed_over.push(jobs.iter().map(|job| job.id).collect::<Vec<_>>());
            let store = store.clone();
            tasks.push(tokio::spawn(async move { store.insert_jobs(&jobs).await }));
        }
        let mut seqs = Vec::new();
        for (task, ids) in tasks.into_iter().zip(&handed_over) {
            let jobs = task.await.unwrap().unwrap();
            assert_eq!(jobs.iter().map(|job| job.id).collect::<Vec<_>>(), *ids, "each request gets its own rows");
            let group: Vec<i64> = jobs.iter().map(|job| job.seq).collect();
            assert!(group.windows(2).all(|pair| pair[1] == pair[0] + 1), "a submission's jobs are consecutive");
            seqs.extend(group);
        }
        let mut distinct = seqs.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 300 + 60 * 2, "every job landed once");
        let listed = store.jobs(Some(JobState::Queued)).await.unwrap();
        assert_eq!(listed.len(), distinct.len());
    }

    #[tokio::test]
    async fn submissions_handed_over_one_after_another_keep_that_order() {
        let (_dir, store) = store().await;
        let mut seqs = Vec::new();
        for _ in 0..20 {
            seqs.push(store.insert_jobs(&[queued_new(test_spec())]).await.unwrap()[0].seq);
        }
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    }

    #[tokio::test]
    async fn a_failing_row_fails_only_its_own_submission_in_a_batch() {
        let (_dir, store) = store().await;
        let existing = store.insert_jobs(&[queued_new(test_spec())]).await.unwrap().remove(0);
        let (before, before_answer) = submission(vec![queued_new(test_spec())]);
        // A second job with an id that exists: the primary key refuses it, and with it the
        // first job of the same submission (all or none).
        let clash = NewJob { id: existing.id, ..queued_new(test_spec()) };
        let (failing, failing_answer) = submission(vec![queued_new(test_spec()), clash]);
        let (after, after_answer) = submission(vec![queued_new(test_spec())]);
        let kept = [before.jobs[0].id, after.jobs[0].id];
        let dropped = failing.jobs[0].id;
        commit_batch(&store.pool, &store.totals, vec![before, failing, after]).await;
        assert_eq!(before_answer.await.unwrap().unwrap()[0].id, kept[0]);
        let err = failing_answer.await.unwrap().unwrap_err();
        assert!(!err.is_transient(), "a constraint, not the disk: {err:?}");
        assert_eq!(after_answer.await.unwrap().unwrap()[0].id, kept[1]);
        for id in kept {
            assert_eq!(store.job(id).await.unwrap().unwrap().state, JobState::Queued);
        }
        assert!(store.job(dropped).await.unwrap().is_none(), "the failing submission left nothing behind");
        assert_eq!(store.job_counts().await.unwrap(), store.job_counts_by_query().await.unwrap());
    }

    #[tokio::test]
    async fn a_batch_that_cannot_commit_fails_its_requests_and_the_writer_goes_on() {
        let (dir, store) = store().await;
        // Another connection holds the write lock and the writer's pool does not wait for it:
        // every write of the batch is refused as on a full disk (a transient error that fails
        // the transaction as a whole, not one row); the test below fills a real disk.
        let short = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("trainq.db"))
            .busy_timeout(std::time::Duration::ZERO);
        let impatient = SqlitePool::connect_with(short).await.unwrap();
        let mut holder = store.pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap();
        let totals = JobTotals::default();
        let (first, first_answer) = submission(vec![queued_new(test_spec())]);
        let (second, second_answer) = submission(vec![queued_new(test_spec())]);
        commit_batch(&impatient, &totals, vec![first, second]).await;
        for answer in [first_answer, second_answer] {
            let err = answer.await.unwrap().unwrap_err();
            assert!(err.is_transient(), "the lock, not the rows: {err:?}");
        }
        assert!(totals.snapshot().is_empty(), "nothing counted that was not stored");
        sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
        let (third, third_answer) = submission(vec![queued_new(test_spec())]);
        commit_batch(&impatient, &totals, vec![third]).await;
        assert_eq!(third_answer.await.unwrap().unwrap().len(), 1, "the next batch lands");
    }

    /// A tmpfs of `size` mounted on `dir` (root only); `None`, after a loud SKIPPED line, elsewhere.
    /// Through mount(2) itself: only the supervisor starts processes.
    fn small_tmpfs(dir: &std::path::Path, size: &str) -> Option<SmallTmpfs> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let target = CString::new(dir.as_os_str().as_bytes()).ok()?;
        let (tmpfs, options) = (CString::new("tmpfs").ok()?, CString::new(format!("size={size}")).ok()?);
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; mount(2) fails
        // cleanly (EPERM) without root.
        let mounted =
            unsafe { libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0, options.as_ptr().cast()) } == 0;
        if !mounted {
            eprintln!("\n!!! SKIPPED: a full disk needs root to mount a small tmpfs; the full-disk batch was NOT tested !!!\n");
            return None;
        }
        Some(SmallTmpfs { target })
    }

    /// Unmounts the tmpfs when dropped.
    struct SmallTmpfs {
        target: std::ffi::CString,
    }

    impl Drop for SmallTmpfs {
        fn drop(&mut self) {
            // SAFETY: a NUL-terminated path; a lazy unmount cannot fail on a busy mount.
            unsafe { libc::umount2(self.target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[tokio::test]
    async fn a_batch_on_a_full_disk_fails_each_request_as_a_full_disk_and_the_next_lands_once_there_is_room() {
        let temp = tempfile::tempdir().unwrap();
        let Some(_tmpfs) = small_tmpfs(temp.path(), "4m") else { return };
        let store = Store::open(temp.path()).await.unwrap();
        // Fill the disk, keeping the filler to give the room back later.
        let filler = temp.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 16 << 10];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        drop(file);
        // Big enough rows that the WAL must grow past what it already has.
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..40 {
            let mut job = queued_new(test_spec());
            job.notes = vec!["x".repeat(64 << 10)];
            let (submission, answer) = submission(vec![job]);
            batch.push(submission);
            answers.push(answer);
        }
        commit_batch(&store.pool, &store.totals, batch).await;
        let mut full = 0;
        for answer in answers {
            if let Err(err) = answer.await.unwrap() {
                assert!(err.is_disk_full(), "each failed request says the disk is full: {err:?}");
                full += 1;
            }
        }
        assert!(full > 0, "the disk filled");
        assert_eq!(store.job_counts().await.unwrap(), store.job_counts_by_query().await.unwrap());
        std::fs::remove_file(&filler).unwrap();
        let landed = store.insert_jobs(&[queued_new(test_spec())]).await.unwrap();
        assert_eq!(store.job(landed[0].id).await.unwrap().unwrap().state, JobState::Queued, "the writer goes on");
        store.pool.close().await;
    }
}
