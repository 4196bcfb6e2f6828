//! `trainq relay`: runs a worker where the server cannot watch it (a Slurm compute node) and
//! forwards every line the worker prints to the server as ordered [`RelayBatch`]es (the protocol is
//! in `domain/relay.rs`). The worker never waits on the network: one reader task per stream moves
//! lines into one queue, echoing each to the relay's own stdout or stderr so Slurm's output file
//! keeps a copy, and one sender task empties the queue, retrying a batch until the server takes it
//! (the server may restart meanwhile). The relay exits with the worker's code, so Slurm's record
//! of the job agrees with the worker's.

use crate::config::RelayArgs;
use crate::domain::relay::{RelayBatch, RelayLine, Stream, WorkerExit, SECRET_VARIABLE};
use crate::domain::worker_protocol::ProgressEvent;
use crate::supervisor::spawn_relayed_worker;
use anyhow::Context;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most lines in one POST.
const BATCH_LINES: usize = 200;
/// How long a line may wait for others to join its batch.
const BATCH_WAIT: Duration = Duration::from_millis(300);
/// Lines waiting for the server beyond which `step` progress events are dropped (never log lines
/// or other events), so a long server outage cannot take the node's memory.
const MAX_WAITING_LINES: usize = 100_000;
/// The pause before a batch's first retry; it doubles with each failure up to [`RETRY_MAX_PAUSE`].
const RETRY_FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two tries of a batch.
const RETRY_MAX_PAUSE: Duration = Duration::from_secs(5);
/// One request's limit: a hung connection counts as a failed try.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After the worker exits, how long its output may stay open (held by a process it started)
/// before the relay stops reading it.
const OUTPUT_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// While a batch keeps failing, one warning per this many tries (about a minute at the longest pause).
const RETRIES_PER_WARNING: u32 = 12;

/// The relay's exit code when the worker cannot be started (a shell's "command not found").
pub const EXIT_CANNOT_START: i32 = 127;

/// Takes the job's secret out of this process's environment, so no process started later
/// inherits it. Call before any thread exists (it changes the environment).
pub fn take_secret() -> anyhow::Result<String> {
    let secret = std::env::var(SECRET_VARIABLE).ok().filter(|secret| !secret.is_empty());
    std::env::remove_var(SECRET_VARIABLE);
    secret.with_context(|| {
        format!("{SECRET_VARIABLE} is not set: the relay needs the job's secret, which the server puts in the batch script's environment")
    })
}

/// Runs the worker command of `args` with `secret` proving to the server which job it is, relays
/// its output until it exits and the server has it all (or `--flush-timeout-secs` have passed
/// since the exit), and returns the exit code the relay should exit with: the worker's own, or
/// 128 + the signal that killed it ([`EXIT_CANNOT_START`] if it could not be started).
pub async fn relay(args: &RelayArgs, secret: String) -> anyhow::Result<i32> {
    let mut client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(ca_file) = &args.ca_file {
        client = crate::tls::trust_ca_file(client, ca_file)?;
    }
    let client = client.build().context("building the HTTP client")?;
    let sender = Sender {
        client,
        endpoint: format!("{}/api/worker/jobs/{}/lines", args.url.trim_end_matches('/'), args.job),
        secret,
        run: uuid::Uuid::new_v4().to_string(),
    };
    let queue = Arc::new(LineQueue::default());
    let mut sending = tokio::spawn(sender.send_all(Arc::clone(&queue)));
    // Before the worker exists, so a signal meant for it cannot kill the relay instead.
    let mut signals = ForwardedSignals::install()?;
    let exit = match spawn_relayed_worker(&args.command) {
        Ok(child) => watch_worker(child, &queue, &mut signals).await?,
        Err(error) => {
            // The server learns why, instead of keeping the job `running` with no word from it.
            let text = format!("trainq relay: cannot start {}: {error}", args.command[0].to_string_lossy());
            tracing::error!("{text}");
            queue.push(RelayLine { stream: Stream::Stderr, text });
            WorkerExit::Code(EXIT_CANNOT_START)
        }
    };
    queue.finish(exit);
    let flush_timeout = Duration::from_secs(args.flush_timeout_secs);
    if tokio::time::timeout(flush_timeout, &mut sending).await.is_err() {
        sending.abort();
        tracing::error!(
            waiting = queue.lock().lines.len(),
            "gave up after {}s: the server did not take the worker's last lines and its exit; they are only in this output",
            flush_timeout.as_secs()
        );
    }
    Ok(exit_code(exit))
}

/// The code a process exits with to report `exit` as a shell would.
pub fn exit_code(exit: WorkerExit) -> i32 {
    match exit {
        WorkerExit::Code(code) => code,
        WorkerExit::Signal(signal) => 128 + signal,
    }
}

/// SIGTERM and SIGINT, caught so they reach the worker through the relay (which then reports
/// how it ended) instead of ending the relay.
struct ForwardedSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ForwardedSignals {
    fn install() -> anyhow::Result<ForwardedSignals> {
        Ok(ForwardedSignals {
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    /// The next signal caught.
    async fn next(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.interrupt.recv() => libc::SIGINT,
        }
    }
}

/// Relays the worker's lines into `queue` and forwards signals to it until it exits and its
/// output is read; returns how it ended.
async fn watch_worker(
    mut child: Child,
    queue: &Arc<LineQueue>,
    signals: &mut ForwardedSignals,
) -> anyhow::Result<WorkerExit> {
    let mut readers = tokio::task::JoinSet::new();
    let stdout = child.stdout.take().context("the worker's stdout is not piped")?;
    let stderr = child.stderr.take().context("the worker's stderr is not piped")?;
    readers.spawn(read_lines(stdout, Stream::Stdout, tokio::io::stdout(), Arc::clone(queue)));
    readers.spawn(read_lines(stderr, Stream::Stderr, tokio::io::stderr(), Arc::clone(queue)));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the worker")?,
            signal = signals.next() => {
                if let Some(pid) = child.id() {
                    tracing::info!(signal, "forwarding a signal to the worker");
                    // SAFETY: kill has no memory effects; the pid is our unreaped child's.
                    unsafe { libc::kill(pid as libc::pid_t, signal) };
                }
            }
        }
    };
    // What the worker printed just before it exited is still in the pipes: read to the end, but not
    // forever if a process it started keeps them open.
    let all_read = async { while readers.join_next().await.is_some() {} };
    if tokio::time::timeout(OUTPUT_CLOSE_WAIT, all_read).await.is_err() {
        tracing::warn!(
            "the worker exited but its output is still open (a process it started?); relaying what was read"
        );
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => WorkerExit::Code(code),
        (None, Some(signal)) => WorkerExit::Signal(signal),
        (None, None) => WorkerExit::Code(1),
    })
}

/// Moves the lines of one of the worker's streams into `queue` (bytes up to each newline, invalid
/// UTF-8 replaced) and echoes each to `echo`.
async fn read_lines(
    output: impl AsyncRead + Unpin,
    stream: Stream,
    mut echo: impl AsyncWrite + Unpin,
    queue: Arc<LineQueue>,
) {
    let mut output = BufReader::new(output);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match output.read_until(b'\n', &mut bytes).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(?stream, "reading the worker's output failed: {error}");
                return;
            }
        }
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        // The echo is only a copy: a failed one must not stop the relay.
        let _ = echo.write_all(&bytes).await;
        let _ = echo.flush().await;
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        queue.push(RelayLine { stream, text: String::from_utf8_lossy(text).into_owned() });
    }
}

/// Whether `line` is a `step` progress event: the one kind the relay may drop under memory
/// pressure (the next one says the same, newer).
fn is_step_event(line: &RelayLine) -> bool {
    line.stream == Stream::Stdout
        && matches!(ProgressEvent::from_line(&line.text), Some(Ok(ProgressEvent::Step { .. })))
}

/// The lines read from the worker and not yet taken by the server, in the order read.
#[derive(Default)]
struct LineQueue {
    state: Mutex<QueueState>,
    /// Wakes the sender: a line arrived, or the worker's end.
    changed: Notify,
}

#[derive(Default)]
struct QueueState {
    lines: VecDeque<RelayLine>,
    /// How the worker ended, once it did and its output is read: no line will follow.
    exit: Option<WorkerExit>,
    /// Set when the server wants nothing more for this job: lines are then only echoed.
    refused: bool,
    /// Over [`MAX_WAITING_LINES`]: step events are dropped until the queue is back under half.
    shedding_steps: bool,
    /// Step events dropped in the current shedding episode.
    dropped_steps: u64,
}

impl LineQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a line for the server (unless the server refused the job).
    fn push(&self, line: RelayLine) {
        let mut state = self.lock();
        if state.refused {
            return;
        }
        if state.shedding_steps && is_step_event(&line) {
            state.dropped_steps += 1;
            return;
        }
        if !state.shedding_steps && state.lines.len() >= MAX_WAITING_LINES {
            state.shedding_steps = true;
            let before = state.lines.len();
            state.lines.retain(|line| !is_step_event(line));
            state.dropped_steps = (before - state.lines.len()) as u64;
            let text = format!(
                "trainq relay: more than {MAX_WAITING_LINES} lines are waiting for the server; dropping step progress events until it catches up"
            );
            tracing::warn!("{text}");
            // In the job's log too, so a gap in its progress is explained.
            state.lines.push_back(RelayLine { stream: Stream::Stderr, text });
            if is_step_event(&line) {
                state.dropped_steps += 1;
                return;
            }
        }
        state.lines.push_back(line);
        drop(state);
        self.changed.notify_one();
    }

    /// Nothing more will be read: the worker ended this way.
    fn finish(&self, exit: WorkerExit) {
        self.lock().exit = Some(exit);
        self.changed.notify_one();
    }

    /// The server wants nothing more for this job.
    fn refuse(&self) {
        let mut state = self.lock();
        state.refused = true;
        state.lines.clear();
    }

    /// Waits for the next batch: [`BATCH_LINES`] lines, or what arrived within [`BATCH_WAIT`] of
    /// its first line, or, once the worker ended, the rest (the last batch carries the exit).
    async fn next_batch(&self) -> (Vec<RelayLine>, Option<WorkerExit>) {
        let mut deadline: Option<Instant> = None;
        loop {
            {
                let mut state = self.lock();
                let waited = deadline.is_some_and(|deadline| Instant::now() >= deadline);
                if state.exit.is_some() || state.lines.len() >= BATCH_LINES || waited {
                    let count = state.lines.len().min(BATCH_LINES);
                    let lines: Vec<RelayLine> = state.lines.drain(..count).collect();
                    if state.shedding_steps && state.lines.len() < MAX_WAITING_LINES / 2 {
                        state.shedding_steps = false;
                        tracing::warn!(
                            dropped = state.dropped_steps,
                            "the server caught up; relaying step progress events again"
                        );
                    }
                    let exit = if state.lines.is_empty() { state.exit } else { None };
                    return (lines, exit);
                }
                if !state.lines.is_empty() && deadline.is_none() {
                    deadline = Some(Instant::now() + BATCH_WAIT);
                }
            }
            match deadline {
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, self.changed.notified()).await;
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// What the server said to one POST.
enum Answer {
    /// Stored (or already had it).
    Stored,
    /// Try the same batch again later: the server is unreachable, restarting or overloaded.
    Retry(String),
    /// The server wants nothing more for this job.
    Refused(String),
}

/// POSTs batches to the server in order, one at a time.
struct Sender {
    client: reqwest::Client,
    endpoint: String,
    secret: String,
    /// This relay run's id, which tells its batch numbers from an earlier run's.
    run: String,
}

impl Sender {
    /// Sends every batch the queue yields, until the one carrying the worker's exit is stored or
    /// the server refuses the job.
    async fn send_all(self, queue: Arc<LineQueue>) {
        for seq in 1.. {
            let (lines, exit) = queue.next_batch().await;
            let batch = RelayBatch { seq, run: self.run.clone(), lines, exit };
            if let Err(why) = self.deliver(&batch).await {
                tracing::warn!(
                    "{why}; sending nothing more (the worker keeps running, its output is still echoed here)"
                );
                queue.refuse();
                return;
            }
            if batch.exit.is_some() {
                return;
            }
        }
    }

    /// Posts `batch` until the server stores it (retrying with growing pauses, without limit) or
    /// refuses it (the reason).
    async fn deliver(&self, batch: &RelayBatch) -> Result<(), String> {
        let mut pause = RETRY_FIRST_PAUSE;
        let mut failures = 0u32;
        loop {
            match self.post(batch).await {
                Answer::Stored => {
                    if failures > 0 {
                        tracing::info!(seq = batch.seq, failures, "the server took the batch");
                    }
                    return Ok(());
                }
                Answer::Refused(why) => return Err(why),
                Answer::Retry(why) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(RETRIES_PER_WARNING) {
                        tracing::warn!(seq = batch.seq, failures, "the server did not take the batch, retrying: {why}");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                }
            }
        }
    }

    async fn post(&self, batch: &RelayBatch) -> Answer {
        let response = match self.client.post(&self.endpoint).bearer_auth(&self.secret).json(batch).send().await {
            Ok(response) => response,
            Err(error) => return Answer::Retry(format!("{:#}", anyhow::Error::from(error))),
        };
        let status = response.status();
        match status.as_u16() {
            _ if status.is_success() => Answer::Stored,
            409 => Answer::Refused(String::from("the server says the job is no longer running (409)")),
            401 => Answer::Refused(String::from("the server refused the job's secret (401)")),
            404 => Answer::Refused(String::from("the server does not know this job (404)")),
            408 | 429 => Answer::Retry(format!("the server answered {status}")),
            _ if status.is_server_error() => Answer::Retry(format!("the server answered {status}")),
            _ => Answer::Refused(format!("the server answered {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A stand-in for the server's lines endpoint: answers the n-th POST (from 1) with
    /// `answer(n)` and, like the server, stores a batch it answered 2xx once per seq.
    struct MockServer {
        answer: Box<dyn Fn(usize) -> u16 + Send + Sync>,
        attempts: AtomicUsize,
        stored: Mutex<Vec<RelayBatch>>,
        /// Each request's target and `Authorization` header.
        requests: Mutex<Vec<(String, String)>>,
    }

    impl MockServer {
        fn new(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Arc<MockServer> {
            Arc::new(MockServer {
                answer: Box::new(answer),
                attempts: AtomicUsize::new(0),
                stored: Mutex::new(Vec::new()),
                requests: Mutex::new(Vec::new()),
            })
        }

        /// Serves `listener` for the rest of the test.
        fn serve(self: &Arc<Self>, listener: TcpListener) {
            let server = Arc::clone(self);
            tokio::spawn(async move {
                while let Ok((connection, _)) = listener.accept().await {
                    let server = Arc::clone(&server);
                    tokio::spawn(async move { server.answer_connection(connection).await });
                }
            });
        }

        /// Answers the requests of one kept-alive connection.
        async fn answer_connection(&self, connection: TcpStream) -> anyhow::Result<()> {
            let mut connection = BufReader::new(connection);
            loop {
                let mut request_line = String::new();
                if connection.read_line(&mut request_line).await? == 0 {
                    return Ok(());
                }
                let (mut length, mut authorization) = (0, String::new());
                loop {
                    let mut header = String::new();
                    connection.read_line(&mut header).await?;
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(": ").context("a header")?;
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.parse()?,
                        "authorization" => authorization = value.to_string(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                connection.read_exact(&mut body).await?;
                let batch: RelayBatch = serde_json::from_slice(&body)?;
                let target = request_line.split(' ').nth(1).unwrap_or_default().to_string();
                self.requests.lock().unwrap().push((target, authorization));
                let status = (self.answer)(self.attempts.fetch_add(1, Ordering::SeqCst) + 1);
                if status < 300 {
                    let mut stored = self.stored.lock().unwrap();
                    if !stored.iter().any(|earlier| earlier.seq == batch.seq) {
                        stored.push(batch);
                    }
                }
                connection
                    .get_mut()
                    .write_all(format!("HTTP/1.1 {status} Mock\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await?;
            }
        }

        /// The stored batches, checked to be one relay run numbered 1, 2, 3 … with the exit on
        /// the last alone, and their lines in order.
        fn stored_lines(&self) -> (Vec<(Stream, String)>, Option<WorkerExit>) {
            let mut batches = self.stored.lock().unwrap().clone();
            batches.sort_by_key(|batch| batch.seq);
            let seqs: Vec<u64> = batches.iter().map(|batch| batch.seq).collect();
            assert_eq!(seqs, (1..=batches.len() as u64).collect::<Vec<_>>());
            assert!(batches.iter().all(|batch| batch.run == batches[0].run));
            assert!(batches.iter().rev().skip(1).all(|batch| batch.exit.is_none()));
            let lines = batches
                .iter()
                .flat_map(|batch| batch.lines.iter().map(|line| (line.stream, line.text.clone())))
                .collect();
            (lines, batches.last().and_then(|batch| batch.exit))
        }
    }

    /// Relay arguments that run `script` under `sh -c`.
    fn shell(url: &str, script: &str) -> RelayArgs {
        RelayArgs {
            url: url.to_string(),
            job: JobId::new(),
            flush_timeout_secs: 5,
            ca_file: None,
            command: vec!["sh".into(), "-c".into(), script.into()],
        }
    }

    async fn listening(server: &Arc<MockServer>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        server.serve(listener);
        url
    }

    fn out(text: &str) -> (Stream, String) {
        (Stream::Stdout, text.to_string())
    }

    #[tokio::test]
    async fn lines_arrive_in_order_with_their_streams_and_the_exit_code() {
        let server = MockServer::new(|_| 200);
        let url = listening(&server).await;
        let args =
            shell(&url, r#"echo a; sleep 0.05; echo b >&2; sleep 0.05; echo '@trainq {"event":"final"}'; exit 3"#);
        assert_eq!(relay(&args, String::from("s3cret")).await.unwrap(), 3);
        let (lines, exit) = server.stored_lines();
        let stdout = vec![String::from("a"), String::from(r#"@trainq {"event":"final"}"#)];
        assert_eq!(by_stream(&lines), (stdout, vec![String::from("b")]));
        assert_eq!(exit, Some(WorkerExit::Code(3)));
        let requests = server.requests.lock().unwrap().clone();
        let target = format!("/api/worker/jobs/{}/lines", args.job);
        assert!(
            requests.iter().all(|request| *request == (target.clone(), String::from("Bearer s3cret"))),
            "{requests:?}"
        );
    }

    /// Each stream's lines in the order stored.
    fn by_stream(lines: &[(Stream, String)]) -> (Vec<String>, Vec<String>) {
        let of = |stream| lines.iter().filter(|(s, _)| *s == stream).map(|(_, text)| text.clone()).collect();
        (of(Stream::Stdout), of(Stream::Stderr))
    }

    #[tokio::test]
    async fn a_worker_killed_by_a_signal_or_never_started_gives_a_shells_exit_code() {
        let server = MockServer::new(|_| 204);
        let url = listening(&server).await;
        assert_eq!(relay(&shell(&url, "echo bye; kill -KILL $$"), String::from("s")).await.unwrap(), 128 + 9);
        assert_eq!(server.stored_lines(), (vec![out("bye")], Some(WorkerExit::Signal(9))));

        let server = MockServer::new(|_| 200);
        let url = listening(&server).await;
        let missing = RelayArgs { command: vec!["/nonexistent/trainq-worker".into()], ..shell(&url, "") };
        assert_eq!(relay(&missing, String::from("s")).await.unwrap(), EXIT_CANNOT_START);
        let (lines, exit) = server.stored_lines();
        assert_eq!(exit, Some(WorkerExit::Code(EXIT_CANNOT_START)));
        assert!(lines[0].1.contains("cannot start /nonexistent/trainq-worker"), "{lines:?}");
    }

    #[tokio::test]
    async fn batches_the_server_failed_are_retried_without_loss_or_duplicates() {
        // To the relay, a stored batch whose 200 was lost looks the same as a 503: the server's
        // dedupe by seq makes the retry harmless in both cases.
        let server = MockServer::new(|attempt| if attempt <= 2 { 503 } else { 200 });
        let url = listening(&server).await;
        let args =
            shell(&url, "i=1; while [ $i -le 450 ]; do echo line$i; i=$((i+1)); done; sleep 0.05; echo done >&2");
        assert_eq!(relay(&args, String::from("s")).await.unwrap(), 0);
        let (lines, exit) = server.stored_lines();
        // Two pipes: each stream's order is kept; how they interleave is the reading's luck.
        let expected: Vec<String> = (1..=450).map(|i| format!("line{i}")).collect();
        assert_eq!(by_stream(&lines), (expected, vec![String::from("done")]));
        assert_eq!(exit, Some(WorkerExit::Code(0)));
        let batches = server.stored.lock().unwrap().len();
        assert!(batches >= 3, "at most {BATCH_LINES} lines a batch");
        assert_eq!(server.attempts.load(Ordering::SeqCst), batches + 2);
    }

    #[tokio::test]
    async fn lines_wait_for_a_server_that_starts_late() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let server = MockServer::new(|_| 200);
        let args = shell(&format!("http://{address}"), "echo one; echo two; sleep 1.3; echo three");
        let relaying = tokio::spawn(async move { relay(&args, String::from("s")).await.unwrap() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(server.attempts.load(Ordering::SeqCst), 0);
        server.serve(TcpListener::bind(address).await.unwrap());
        assert_eq!(relaying.await.unwrap(), 0);
        assert_eq!(server.stored_lines(), (vec![out("one"), out("two"), out("three")], Some(WorkerExit::Code(0))));
    }

    #[tokio::test]
    async fn a_job_the_server_no_longer_runs_stops_the_sending_but_not_the_worker() {
        let server = MockServer::new(|_| 409);
        let url = listening(&server).await;
        let started = Instant::now();
        assert_eq!(relay(&shell(&url, "echo x; sleep 0.6; echo y; exit 4"), String::from("s")).await.unwrap(), 4);
        assert!(started.elapsed() >= Duration::from_millis(600), "the relay waited for the worker");
        assert_eq!(server.attempts.load(Ordering::SeqCst), 1, "nothing is sent after a 409");
        assert!(server.stored.lock().unwrap().is_empty());
    }

    #[test]
    fn over_the_memory_bound_only_step_events_are_dropped() {
        let queue = LineQueue::default();
        let step = || RelayLine {
            stream: Stream::Stdout,
            text: String::from(
                r#"@trainq {"event":"step","phase":1,"epoch":1,"step":3,"steps":9,"images_per_sec":10.0}"#,
            ),
        };
        let log = |text: &str| RelayLine { stream: Stream::Stderr, text: text.to_string() };
        assert!(is_step_event(&step()));
        for i in 0..MAX_WAITING_LINES {
            queue.push(if i % 2 == 0 { step() } else { log("old") });
        }
        queue.push(log("newest"));
        queue.push(step());
        queue.push(RelayLine { stream: Stream::Stdout, text: String::from(r#"@trainq {"event":"final"}"#) });
        let state = queue.lock();
        assert_eq!(state.lines.len(), MAX_WAITING_LINES / 2 + 3);
        assert!(!state.lines.iter().any(is_step_event));
        assert_eq!(state.dropped_steps, MAX_WAITING_LINES as u64 / 2 + 1);
        let last: Vec<&str> = state.lines.iter().rev().take(3).map(|line| line.text.as_str()).collect();
        assert!(last[2].contains("dropping step progress events"), "{last:?}");
        assert_eq!(last[..2], [r#"@trainq {"event":"final"}"#, "newest"]);
    }
}
