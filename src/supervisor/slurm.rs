//! Slurm's command-line tools, as the Slurm executor uses them: `sbatch --parsable` to submit,
//! `scontrol show job -o` to follow (it still knows a job `MinJobAge` seconds after it ended; no
//! accounting daemon needed), `scontrol update … Comment=` + `scancel` to cancel, so a job
//! cancelled by trainq can be told from one cancelled outside it. Measured behaviour of Slurm
//! 22.05 is in deploy/slurm/README.md.

use crate::domain::outcome::{SlurmEnd, SlurmState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// The comment trainq puts on a Slurm job before cancelling it.
pub const CANCEL_MARK: &str = "cancelled-by-trainq";

/// How trainq submits to Slurm (from the config).
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--time` (Slurm's format, e.g. `1-00:00:00`).
    pub time: Option<String>,
    /// GPUs per job (`--gres=gpu:N`); 0 = a CPU job.
    pub gpus: u32,
    /// `--cpus-per-task`.
    pub cpus_per_job: u32,
    /// The URL compute nodes reach this server at (the relay reports there).
    pub public_url: String,
    /// The `trainq` binary as compute nodes see it (runs `trainq relay`).
    pub relay_program: PathBuf,
    /// The CA (PEM) that signed the server's certificate, as compute nodes see the file: the relay
    /// trusts it besides the usual roots (`trainq relay --ca-file`).
    pub relay_ca_file: Option<PathBuf>,
    /// How often a job's Slurm state is read.
    pub poll: std::time::Duration,
}

/// A Slurm tool failed or answered something unexpected.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {message}")]
pub struct SlurmError {
    /// What was run.
    pub command: String,
    /// What went wrong (the tool's own words).
    pub message: String,
}

/// What `scontrol show job -o` says of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, …
    pub state: SlurmState,
    /// Why it is pending, or why it ended (`Resources`, `Priority`, `NonZeroExitCode`, …).
    pub reason: String,
    /// `ExitCode=code:signal`.
    pub exit: Option<(i32, i32)>,
    /// The comment (trainq's cancel mark).
    pub comment: Option<String>,
}

impl SlurmJob {
    /// Whether Slurm is done with the job.
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }

    /// The job's end as [`crate::domain::outcome::decide`] reads it.
    pub fn end(&self, slurm_id: &str) -> SlurmEnd {
        SlurmEnd {
            id: slurm_id.to_string(),
            state: Some(self.state.clone()),
            reason: self.reason.clone(),
            exit: self.exit,
            marked_by_trainq: self.comment.as_deref() == Some(CANCEL_MARK),
        }
    }
}

async fn run(program: &str, args: &[String], env: &[(&str, &str)]) -> Result<String, SlurmError> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let shown = format!("{program} {}", args.join(" "));
    let output =
        command.output().await.map_err(|err| SlurmError { command: shown.clone(), message: err.to_string() })?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(SlurmError {
            command: shown,
            message: if message.is_empty() { output.status.to_string() } else { message },
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Quotes a word for the batch script's `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The batch script: the relay runs the worker and reports for it.
pub fn batch_script(config: &SlurmConfig, job_id: &str, worker: &Path, job_json: &Path) -> String {
    format!(
        "#!/bin/sh\n# trainq job {job_id}, submitted by trainq: it reports to {url} with the secret in its environment.\nexec {relay} relay --url {url_q}{ca} --job {job_id} -- {worker} run --job {job_json}\n",
        url = config.public_url,
        relay = quote(&config.relay_program.to_string_lossy()),
        ca = match &config.relay_ca_file {
            Some(path) => format!(" --ca-file {}", quote(&path.to_string_lossy())),
            None => String::new(),
        },
        url_q = quote(&config.public_url),
        worker = quote(&worker.to_string_lossy()),
        job_json = quote(&job_json.to_string_lossy()),
    )
}

/// The pending reason Slurm gives a job whose `afterok` dependency ended without succeeding (with
/// `--kill-on-invalid-dep=no` it stays pending with it until cancelled).
pub const DEPENDENCY_NEVER_SATISFIED: &str = "DependencyNeverSatisfied";

/// Slurm's `--time` for `duration`, rounded up to whole minutes (Slurm's own granularity):
/// `days-hours:minutes:00`.
pub fn slurm_time(duration: std::time::Duration) -> String {
    let minutes = duration.as_secs().div_ceil(60).max(1);
    format!("{}-{:02}:{:02}:00", minutes / 1440, minutes / 60 % 24, minutes % 60)
}

/// `sbatch`'s arguments for a job whose folder is `dir`, to start only after the Slurm jobs
/// `after` completed successfully (`--dependency=afterok:…`: the Slurm ids of the jobs it waits
/// for that run in Slurm now). `time_limit` is a job's own `--time` (what is left of its time
/// limit plus the shutdown grace): it replaces `--slurm-time`, and Slurm's `TIMEOUT` then means
/// the job reached its limit.
pub fn sbatch_args(
    config: &SlurmConfig,
    job_id: &str,
    dir: &Path,
    script: &Path,
    after: &[String],
    time_limit: Option<std::time::Duration>,
) -> Vec<String> {
    let mut args = vec![
        String::from("--parsable"),
        // The trainq id itself: `squeue -n <id>` finds the job even without its Slurm id.
        format!("--job-name={job_id}"),
        format!("--chdir={}", dir.display()),
        format!("--output={}", dir.join("slurm-%j.out").display()),
        // Only the secret (by name: its value never shows in `ps` or `scontrol show job`).
        format!("--export=NONE,{}", crate::domain::relay::SECRET_VARIABLE),
        format!("--cpus-per-task={}", config.cpus_per_job.max(1)),
        // A job Slurm restarts on its own would report as a second run; trainq decides re-runs.
        String::from("--no-requeue"),
    ];
    if let Some(partition) = &config.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(account) = &config.account {
        args.push(format!("--account={account}"));
    }
    match (time_limit, &config.time) {
        (Some(limit), _) => args.push(format!("--time={}", slurm_time(limit))),
        (None, Some(time)) => args.push(format!("--time={time}")),
        (None, None) => {}
    }
    if config.gpus > 0 {
        args.push(format!("--gres=gpu:{}", config.gpus));
    }
    if !after.is_empty() {
        args.push(format!("--dependency=afterok:{}", after.join(":")));
        // Left pending when a dependency fails, so trainq fails it with that job's reason and
        // cancels it (Slurm's own kill would read as a cancel from outside trainq).
        args.push(String::from("--kill-on-invalid-dep=no"));
    }
    args.push(script.display().to_string());
    args
}

/// Submits; returns the Slurm job id.
pub async fn submit(
    config: &SlurmConfig,
    job_id: &str,
    dir: &Path,
    script: &Path,
    secret: &str,
    after: &[String],
    time_limit: Option<std::time::Duration>,
) -> Result<String, SlurmError> {
    let args = sbatch_args(config, job_id, dir, script, after, time_limit);
    let out = run("sbatch", &args, &[(crate::domain::relay::SECRET_VARIABLE, secret)]).await?;
    parse_sbatch(&out).ok_or_else(|| SlurmError {
        command: String::from("sbatch"),
        message: format!("unexpected answer `{}`", out.trim()),
    })
}

/// `123` or `123;cluster` → `123`.
pub fn parse_sbatch(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// The job's state; `None` once Slurm no longer knows it (`MinJobAge` passed).
pub async fn job(slurm_id: &str) -> Result<Option<SlurmJob>, SlurmError> {
    match run("scontrol", &[String::from("show"), String::from("job"), String::from("-o"), slurm_id.to_string()], &[])
        .await
    {
        Ok(out) => Ok(parse_scontrol(&out)),
        Err(err) if err.message.contains("Invalid job id") => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads `scontrol show job -o`'s one line of `Key=Value` fields.
pub fn parse_scontrol(out: &str) -> Option<SlurmJob> {
    let fields: HashMap<&str, &str> = out.split_whitespace().filter_map(|field| field.split_once('=')).collect();
    let state = SlurmState::parse(fields.get("JobState")?);
    let exit = fields.get("ExitCode").and_then(|code| {
        let (code, signal) = code.split_once(':')?;
        Some((code.parse().ok()?, signal.parse().ok()?))
    });
    let comment = fields.get("Comment").filter(|comment| **comment != "(null)").map(|comment| comment.to_string());
    Some(SlurmJob { state, reason: fields.get("Reason").unwrap_or(&"None").to_string(), exit, comment })
}

/// Marks the job as trainq's cancel, then cancels it. `scancel` exits 0 even for unknown jobs,
/// so the caller follows the state afterwards.
pub async fn cancel(slurm_id: &str) -> Result<(), SlurmError> {
    let mark = [String::from("update"), format!("jobid={slurm_id}"), format!("comment={CANCEL_MARK}")];
    if let Err(err) = run("scontrol", &mark, &[]).await {
        tracing::warn!(%err, "could not mark the Slurm job before cancelling it");
    }
    run("scancel", &[slurm_id.to_string()], &[]).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SlurmConfig {
        SlurmConfig {
            partition: Some(String::from("gpu")),
            account: None,
            time: Some(String::from("12:00:00")),
            gpus: 1,
            cpus_per_job: 4,
            public_url: String::from("http://head:8080"),
            relay_program: PathBuf::from("/opt/trainq/bin/trainq"),
            relay_ca_file: None,
            poll: std::time::Duration::from_secs(2),
        }
    }

    #[test]
    fn a_relay_behind_tls_trusts_the_admins_ca_as_the_compute_nodes_see_it() {
        let config = SlurmConfig {
            public_url: String::from("https://head:8443"),
            relay_ca_file: Some(PathBuf::from("/shared/campus ca.pem")),
            ..config()
        };
        let script =
            batch_script(&config, "abc", Path::new("/opt/trainq-worker"), Path::new("/shared/jobs/abc/job.json"));
        assert!(
            script.contains("relay --url 'https://head:8443' --ca-file '/shared/campus ca.pem' --job abc --"),
            "{script}"
        );
    }

    #[test]
    fn sbatch_gets_the_request_and_only_the_secret_by_name() {
        let args = sbatch_args(
            &config(),
            "abc",
            Path::new("/shared/jobs/abc"),
            Path::new("/shared/jobs/abc/job.sbatch"),
            &[],
            None,
        );
        assert!(!args.iter().any(|arg| arg.starts_with("--dependency")), "{args:?}");
        assert!(args.contains(&String::from("--parsable")));
        assert!(args.contains(&String::from("--job-name=abc")));
        assert!(args.contains(&String::from("--export=NONE,TRAINQ_JOB_SECRET")));
        assert!(args.contains(&String::from("--gres=gpu:1")));
        assert!(args.contains(&String::from("--partition=gpu")) && args.contains(&String::from("--time=12:00:00")));
        assert!(!args.iter().any(|arg| arg.starts_with("--account")));
        assert_eq!(args.last().unwrap(), "/shared/jobs/abc/job.sbatch");
        let script = batch_script(
            &config(),
            "abc",
            Path::new("/opt/it's/trainq-worker"),
            Path::new("/shared/jobs/abc/job.json"),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("exec '/opt/trainq/bin/trainq' relay --url 'http://head:8080' --job abc -- '/opt/it'\\''s/trainq-worker' run --job '/shared/jobs/abc/job.json'"), "{script}");
    }

    #[test]
    fn jobs_it_waits_for_become_an_afterok_dependency_that_slurm_never_kills_on_its_own() {
        let after = [String::from("41"), String::from("45")];
        let args = sbatch_args(
            &config(),
            "abc",
            Path::new("/shared/jobs/abc"),
            Path::new("/shared/jobs/abc/job.sbatch"),
            &after,
            None,
        );
        assert!(args.contains(&String::from("--dependency=afterok:41:45")), "{args:?}");
        assert!(args.contains(&String::from("--kill-on-invalid-dep=no")), "{args:?}");
        assert_eq!(args.last().unwrap(), "/shared/jobs/abc/job.sbatch", "the script stays last");
    }

    #[test]
    fn a_job_with_a_time_limit_gets_it_as_its_own_time() {
        let limit = std::time::Duration::from_secs(2 * 3600 + 30);
        let args = sbatch_args(&config(), "abc", Path::new("/j"), Path::new("/j/job.sbatch"), &[], Some(limit));
        assert!(
            args.contains(&String::from("--time=0-02:01:00")),
            "rounded up to a minute, not --slurm-time: {args:?}"
        );
        assert_eq!(args.iter().filter(|arg| arg.starts_with("--time=")).count(), 1);
        assert_eq!(slurm_time(std::time::Duration::from_secs(3 * 86_400 + 5 * 3600 + 7 * 60)), "3-05:07:00");
        assert_eq!(slurm_time(std::time::Duration::from_secs(1)), "0-00:01:00");
    }

    #[test]
    fn slurm_answers_are_read() {
        assert_eq!(parse_sbatch("45\n").as_deref(), Some("45"));
        assert_eq!(parse_sbatch("45;cluster\n").as_deref(), Some("45"));
        assert_eq!(parse_sbatch("Submitted batch job 45"), None);
        let line = "JobId=23 JobName=trainq-x UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null) ExitCode=0:15 Comment=cancelled-by-trainq NodeList=vm";
        let job = parse_scontrol(line).unwrap();
        assert_eq!(
            job,
            SlurmJob {
                state: SlurmState::Cancelled,
                reason: String::from("None"),
                exit: Some((0, 15)),
                comment: Some(String::from(CANCEL_MARK))
            }
        );
        assert!(job.is_finished());
        let pending = parse_scontrol("JobId=24 JobState=PENDING Reason=Resources ExitCode=0:0 Comment=(null)").unwrap();
        assert_eq!(
            (pending.reason.as_str(), pending.comment.as_deref(), pending.is_finished()),
            ("Resources", None, false)
        );
        assert_eq!(parse_scontrol("garbage"), None);
    }
}
