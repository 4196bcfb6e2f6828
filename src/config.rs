//! Command-line and environment configuration (clap derive; every flag also reads `TRAINQ_*`).

use crate::domain::backbone::Backbone;
use crate::domain::JobId;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// trainq: a training queue for a shared GPU box.
#[derive(Debug, Parser)]
#[command(name = "trainq", version = crate::version::long_version(), about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
pub enum Command {
    /// Run the server: REST API, dashboard, scheduler and worker supervisor.
    Serve(ServeConfig),
    /// Write a small synthetic chest-X-ray-like dataset (NORMAL vs PNEUMONIA) in ImageFolder layout.
    DemoData(DemoDataArgs),
    /// Manage the pretrained backbone weights jobs with `"weights": "imagenet"` start from.
    Weights(WeightsArgs),
    /// Manage users and their API tokens.
    User(UserArgs),
    /// Run a worker where the server cannot watch it (a Slurm compute node) and forward its output
    /// to the server; exits with the worker's exit code (128 + signal if a signal killed it).
    /// The job's secret is read from `TRAINQ_JOB_SECRET`.
    Relay(RelayArgs),
    /// Save the server's URL and your token (asked for, or read from stdin) for the commands
    /// below, in ~/.config/trainq/config.toml (mode 0600).
    Login(LoginArgs),
    /// Queue an experiment: a spec file or an example's name (`q1`, `q3-512`, …), edited with
    /// `--set` and swept with `--sweep`; prints the new job ids.
    Submit(SubmitArgs),
    /// Your jobs, newest first (`--all`: everyone's).
    Ls(LsArgs),
    /// One job, as JSON.
    Show(JobArg),
    /// A job's log (`-f`: follow it until the job ends).
    Logs(LogsArgs),
    /// Live progress bars of jobs (without ids: your queued and running ones) until they end;
    /// plain lines when not on a terminal. Exits like `wait`.
    Watch(WatchArgs),
    /// Wait until jobs (or each job of a group) end: exit 0 when all succeeded, 1 when any failed,
    /// else 3 when any reached its time limit, else 2 when any was cancelled.
    Wait(JobsArg),
    /// Cancel jobs (queued at once; running ones stop after a checkpoint).
    Cancel(JobsArg),
    /// Test metrics of jobs or groups side by side (a group: one row per sweep combination,
    /// mean ± std over its repeats).
    Compare(CompareArgs),
    /// Run a job again, with changes (`--set`), as its child.
    Redo(RedoArgs),
    /// Download jobs' results: checkpoints, plots (PNG and SVG), metrics.csv, predictions.csv,
    /// the Grad-CAM gallery and the spec. Resumable; files already there are skipped.
    Pull(PullArgs),
    /// The homework report of jobs or groups: one self-contained HTML page on stdout
    /// (`trainq report ID… > hw3.html`).
    Report(JobsArg),
    /// Shell completions: `trainq completions bash > /etc/bash_completion.d/trainq`.
    Completions(CompletionsArgs),
    /// Where your job notifications go: an email address and/or a signed webhook (without
    /// flags: show them). A job's spec picks the ends (`"notify": ["succeeded", "failed"]`).
    Notify(NotifyArgs),
    /// Delete finished jobs' files (queued or running ones: cancel first); their rows stay,
    /// marked deleted.
    Rm(JobsArg),
    /// Admin commands against the server (need an admin's token).
    Admin(AdminArgs),
    /// Your token: `trainq token rotate` gets a new one and saves it (the old one stops working).
    Token(TokenArgs),
    /// Who you are, and your device-hour budget this period: used, held by running jobs, left.
    Me,
}

/// `trainq token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The `trainq token` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Get a new token and save it in the client's config; the old one stops working at once.
    Rotate,
}

/// `trainq admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The `trainq admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Free the disk of finished jobs that ended long ago: delete them (their rows stay, marked
    /// deleted), or with `--keep` remove only the files not listed.
    Gc(GcArgs),
    /// Every user's disk usage (bytes of their job folders) and the quota.
    Usage,
    /// Save a consistent snapshot of the server's database (taken while it runs) to a file.
    Backup(BackupArgs),
    /// Datasets on the server.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Accounts: import a class roster, list, disable, enable, give a new token.
    Users(AdminUsersArgs),
    /// Set one user's device-hour budget per period (GPU-hours, or CPU-hours with `--cpu`);
    /// it applies from the next scheduling pass.
    Budget(BudgetArgs),
    /// Keep devices for a lab's users from a start to an end, once or weekly: during it only
    /// their jobs start there; before it, only jobs whose time limit ends by its start.
    Reserve(ReserveArgs),
    /// Every lab reservation: devices, times, users.
    Reservations,
    /// Delete a lab reservation: its devices are everyone's from the next scheduling pass.
    Unreserve {
        /// The reservation's name.
        name: String,
    },
}

/// `trainq admin reserve NAME --devices gpu0,gpu1 --start ... --end ... [--weekly] --users a,b`.
#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    /// Its name (`lab-b`).
    pub name: String,
    /// The devices, as `GET /api/devices` names them (`gpu0,gpu1`); a bare number means that GPU.
    #[arg(long, value_delimiter = ',', required = true)]
    pub devices: Vec<String>,
    /// When it begins: RFC 3339 (`2026-12-08T14:00:00Z`, `2026-12-08T15:00:00+01:00`).
    #[arg(long)]
    pub start: String,
    /// When it ends, RFC 3339.
    #[arg(long)]
    pub end: String,
    /// Repeat it every week.
    #[arg(long)]
    pub weekly: bool,
    /// The users it is for (`alice,bob`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub users: Vec<String>,
}

/// `trainq admin backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to write the snapshot to (replaced whole once the snapshot is complete).
    #[arg(long)]
    pub to: PathBuf,
}

/// The `trainq admin datasets` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum DatasetsCommand {
    /// Import a dataset from a zip (Kaggle's as it comes) or a folder: the ImageFolder inside is
    /// found, macOS and Windows junk and a nested duplicate left out, every image decoded.
    Import(DatasetImportArgs),
}

/// `trainq admin datasets import NAME ARCHIVE.zip|DIR`.
#[derive(Debug, Clone, Args)]
pub struct DatasetImportArgs {
    /// The dataset's name, as specs give it (`chest_xray`).
    pub name: String,
    /// A zip archive, or a folder (zipped on the fly, stored, into a temporary file).
    pub source: PathBuf,
    /// Put it in place of the dataset of that name (refused while a queued or running job uses it).
    #[arg(long)]
    pub replace: bool,
    /// Leave files that do not fully decode out (listed) instead of refusing the import.
    #[arg(long)]
    pub skip_bad: bool,
}

/// `trainq admin users`.
#[derive(Debug, Clone, Args)]
pub struct AdminUsersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminUsersCommand,
}

/// The `trainq admin users` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminUsersCommand {
    /// Create the accounts of a roster CSV (header row `name,email,admin`; `admin` optional), all
    /// or none; accounts that exist with the same email and role are skipped.
    Import {
        /// The roster: a CSV file with a header row.
        roster: PathBuf,
        /// Mail each new student a welcome with their token and the `trainq login` line (needs the
        /// server's SMTP settings); otherwise the tokens go to a CSV file of mode 0600.
        #[arg(long)]
        send_tokens: bool,
        /// Where to write the tokens that are not mailed (default: next to the roster,
        /// `<roster>-tokens-<time>.csv`). Never overwritten.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
    },
    /// Every account: role, state, jobs, device-hours, disk, last request.
    Ls {
        /// The server's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable accounts: their tokens answer 401 at once; their jobs stay (queued ones still run).
    Disable {
        /// User names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Enable disabled accounts again.
    Enable {
        /// User names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give a user a new token (printed once); the old one stops working at once.
    Rotate {
        /// The user.
        name: String,
    },
}

/// `trainq admin budget NAME 40h [--cpu]`.
#[derive(Debug, Clone, Args)]
pub struct BudgetArgs {
    /// The user.
    pub name: String,
    /// Device-hours per period: `40h`, `40` or `2.5h`; `default` returns them to the server's.
    pub hours: String,
    /// Set the CPU-hours budget rather than the GPU-hours one.
    #[arg(long)]
    pub cpu: bool,
}

/// `trainq admin gc`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Jobs that ended longer ago than this: `30d`, `12h`, `90m`.
    #[arg(long)]
    pub older_than: String,
    /// Keep these files of each job and remove the rest (comma-separated names, folders or `*`
    /// patterns, e.g. `final.safetensors,metrics.json,plots`); without it the jobs are deleted.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Only list what would go and how many bytes it would free.
    #[arg(long)]
    pub dry_run: bool,
    /// The server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `trainq notify`.
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Email notifications to this address.
    #[arg(long)]
    pub email: Option<String>,
    /// POST notifications (JSON, signed) to this http(s) URL; needs --webhook-secret.
    #[arg(long)]
    pub webhook: Option<String>,
    /// The webhook's signing secret, 16+ characters (e.g. `openssl rand -hex 32`); each POST
    /// carries `X-Trainq-Signature: sha256=<HMAC-SHA256 of the body>`.
    #[arg(long, env = "TRAINQ_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Stop all notifications (removes the email and the webhook).
    #[arg(long)]
    pub off: bool,
}

/// The spec edits `submit` and `redo` share.
#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    /// Set a field before sending: `PATH=VALUE`, e.g. `optimizer.lr=1e-4`, `phases[1].epochs=5`,
    /// `image_size=null`. VALUE is JSON when it reads as JSON, else a string. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// Watch the new jobs until they end (exit code as `trainq wait`).
    #[arg(long, short)]
    pub follow: bool,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `trainq submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// A spec file (JSON), or the name of one of the server's examples (`GET /api/examples`).
    pub spec: String,
    #[command(flatten)]
    pub edits: EditArgs,
    /// Run every value: `PATH=V1,V2,…` (with every value of the other sweeps): one group.
    #[arg(long = "sweep", value_name = "PATH=V1,V2")]
    pub sweeps: Vec<String>,
    /// Run each combination this many times, with seeds seed, seed+1, … (mean ± std in `compare`).
    #[arg(long)]
    pub repeats: Option<u32>,
    /// The jobs' name.
    #[arg(long)]
    pub name: Option<String>,
    /// Start only after these jobs succeeded (ids or unique prefixes, comma-separated); if one
    /// fails or is cancelled, the new jobs fail at once.
    #[arg(long, value_name = "ID[,ID…]", value_delimiter = ',')]
    pub after: Vec<String>,
    /// Start from another job's weights (backbone and head): `ID` (its `final` weights) or
    /// `ID:phase1`; waits for that job to succeed.
    #[arg(long, value_name = "ID[:final|phaseN]")]
    pub init_from: Option<String>,
}

/// `trainq redo`.
#[derive(Debug, Clone, Args)]
pub struct RedoArgs {
    /// The job's id, or a unique prefix.
    pub id: String,
    /// Continue a timed-out, failed or cancelled job from its last checkpoint instead of from the
    /// start (epochs done are not done again); only `time_limit`, `name` and `notify` may change,
    /// e.g. `--resume --set time_limit=4h`.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub edits: EditArgs,
}

/// `trainq logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The job's id, or a unique prefix.
    pub id: String,
    /// Keep printing new lines until the job ends.
    #[arg(long, short)]
    pub follow: bool,
}

/// `trainq watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Job ids or unique prefixes; none: your queued and running jobs.
    pub ids: Vec<String>,
}

/// `trainq compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Job ids (or unique prefixes) and group ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// The table as CSV (a group's std in `<metric>_std` columns).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// The comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `trainq pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Job ids or unique prefixes.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Where to put them (each job in a folder named by its id).
    #[arg(long, default_value = ".")]
    pub to: PathBuf,
}

/// `trainq completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `trainq login URL`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// The server's base URL, e.g. `http://gpubox:8080`.
    pub url: String,
    /// Read the token from stdin without asking (for scripts).
    #[arg(long)]
    pub token_stdin: bool,
    /// A PEM file of the CA that signed the server's certificate (a campus CA), trusted besides
    /// the usual ones and saved with the login; TRAINQ_CA_FILE overrides it.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// `trainq ls`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Everyone's jobs, not only yours.
    #[arg(long)]
    pub all: bool,
    /// Only jobs in these states (comma-separated: queued,running,succeeded,failed,cancelled).
    #[arg(long)]
    pub state: Option<String>,
    /// How many of the newest to show (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// The rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One job: its id or a unique prefix of it.
#[derive(Debug, Clone, Args)]
pub struct JobArg {
    /// The job's id, or a unique prefix (at least 4 hex digits).
    pub id: String,
}

/// Jobs: their ids or unique prefixes.
#[derive(Debug, Clone, Args)]
pub struct JobsArg {
    /// Job ids, or unique prefixes (at least 4 hex digits).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `trainq relay --url URL --job ID -- WORKER ARGS…`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// The trainq server's base URL, as the compute node reaches it (e.g. `http://gpubox:8080`).
    #[arg(long, env = "TRAINQ_URL")]
    pub url: String,
    /// The job this worker runs.
    #[arg(long)]
    pub job: JobId,
    /// After the worker exits: how long to keep retrying the lines the server has not taken yet
    /// (while the worker runs, sending is retried without limit).
    #[arg(long, env = "TRAINQ_RELAY_FLUSH_TIMEOUT_SECS", default_value_t = 600)]
    pub flush_timeout_secs: u64,
    /// A PEM file of the CA that signed the server's certificate, trusted besides the usual ones.
    #[arg(long, env = "TRAINQ_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The worker's command line, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// `trainq user`.
#[derive(Debug, Clone, Args)]
pub struct UserArgs {
    /// The server's data folder (holds `trainq.db`).
    #[arg(long, env = "TRAINQ_DATA_DIR", default_value = "trainq-data", global = true)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: UserCommand,
}

/// The `trainq user` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Create a user and print their API token (shown this once; only its hash is stored).
    Add {
        /// Lowercase letters, digits, `.`, `_`, `-`.
        name: String,
        /// Admins act on every job and may set a job's priority.
        #[arg(long)]
        admin: bool,
        /// Where the user's job notifications go (they can change it with `trainq notify`).
        #[arg(long)]
        email: Option<String>,
    },
    /// Replace a user's token (the old one stops working) and print the new one.
    Token {
        /// The user.
        name: String,
    },
    /// List users (names, roles, creation time; never tokens).
    List,
}

/// Reads `--config FILE` (or `TRAINQ_CONFIG`) for `trainq serve`: a TOML table whose keys are
/// `serve`'s long flags (`cpu_slots = 2` or `cpu-slots = 2`). Each becomes the flag's `TRAINQ_*`
/// variable unless that is already set, so the command line beats the environment, which beats
/// the file. An unknown key is an error that lists the known ones. Must run before any thread is
/// started (it sets environment variables).
pub fn load_config_file(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    use anyhow::Context;
    let args: Vec<String> = args.into_iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    let path = args
        .iter()
        .position(|arg| arg == "--config")
        .and_then(|index| args.get(index + 1).cloned())
        .or_else(|| args.iter().find_map(|arg| arg.strip_prefix("--config=").map(str::to_string)))
        .or_else(|| std::env::var("TRAINQ_CONFIG").ok());
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    for (name, value) in config_variables(&text).with_context(|| format!("in the config file {path}"))? {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

/// The `TRAINQ_*` variables a config file's text stands for.
pub fn config_variables(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    use clap::CommandFactory;
    let table: toml::Table = text.parse()?;
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("serve is a subcommand");
    let known: Vec<(String, String)> = serve
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.replace('-', "_"), arg.get_env()?.to_string_lossy().into_owned())))
        .collect();
    let mut variables = Vec::new();
    for (key, value) in table {
        let Some((_, env)) = known.iter().find(|(name, _)| *name == key.replace('-', "_")) else {
            let names: Vec<&str> = known.iter().map(|(name, _)| name.as_str()).collect();
            anyhow::bail!("unknown key `{key}`; the keys are {}", names.join(", "));
        };
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            other => anyhow::bail!("`{key}` must be a string, number or boolean, not {}", other.type_str()),
        };
        variables.push((env.clone(), value));
    }
    Ok(variables)
}

/// `trainq serve`: every setting, in named groups that each turn their flags into the typed values
/// (bytes, [`Duration`]s, seconds) the rest of the server uses, once.
///
/// The groups are flattened, so the flags, their `TRAINQ_*` variables and the config file's keys
/// are the same as when this was one flat struct (a test pins them). `--help` lists the flags in
/// the order it always has, which interleaves the groups: each flag's `display_order` is its place
/// in that list, so users' habits and the README's excerpts stay right.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// A TOML file of these settings (keys are the flags' long names); flags and `TRAINQ_*`
    /// variables override it. See deploy/trainq.toml.
    #[arg(long, env = "TRAINQ_CONFIG", display_order = 0)]
    pub config: Option<PathBuf>,
    /// Where the API listens and the URL it is reached at.
    #[command(flatten)]
    pub listen: ListenConfig,
    /// The folders trainq reads and writes, and how full their disks may get.
    #[command(flatten)]
    pub storage: StorageConfig,
    /// The worker processes: which program, how many on CPUs, how they are stopped.
    #[command(flatten)]
    pub workers: WorkerConfig,
    /// What each user may ask for.
    #[command(flatten)]
    pub limits: UserLimitsConfig,
    /// How jobs share the devices.
    #[command(flatten)]
    pub scheduling: SchedulingConfig,
    /// Where jobs run, and the Slurm settings when that is a cluster.
    #[command(flatten)]
    pub executor: ExecutorConfig,
    /// What happens to old finished jobs.
    #[command(flatten)]
    pub retention: RetentionConfig,
    /// How job notifications are delivered.
    #[command(flatten)]
    pub notifications: NotificationConfig,
    /// Scheduled backups of the database.
    #[command(flatten)]
    pub backups: BackupConfig,
    /// Each student's device-hours per budget period.
    #[command(flatten)]
    pub budgets: BudgetConfig,
}

/// `trainq serve`'s device-hour budgets (`crate::domain::budget` has the rules).
#[derive(Debug, Clone, Args)]
pub struct BudgetConfig {
    /// GPU-hours each student's jobs may be charged per budget period (admins are exempt; an
    /// admin may set one student's with `trainq admin budget`). Needs --default-time-limit.
    /// Default: no budget.
    #[arg(long, env = "TRAINQ_GPU_HOURS_PER_USER", display_order = 52)]
    pub gpu_hours_per_user: Option<f64>,
    /// CPU-hours each student's jobs may be charged per budget period, on CPU slots. Needs
    /// --default-time-limit. Default: no budget.
    #[arg(long, env = "TRAINQ_CPU_HOURS_PER_USER", display_order = 53)]
    pub cpu_hours_per_user: Option<f64>,
    /// The budget period: a number of rolling days (`30`) or the date it starts (`2026-09-01`,
    /// a term's first day, UTC).
    #[arg(long, env = "TRAINQ_BUDGET_PERIOD", default_value = "30", display_order = 54)]
    pub budget_period: crate::domain::budget::BudgetPeriod,
}

impl BudgetConfig {
    /// The budgets for `inventory`'s devices, `None` when none is set; an error when a budget
    /// is negative or set without the default time limit that every job's charge is bounded by.
    pub fn policy(
        &self,
        default_time_limit: Option<crate::domain::TimeLimit>,
        max_jobs_per_gpu: usize,
        inventory: &crate::devices::Inventory,
    ) -> anyhow::Result<Option<crate::budgets::BudgetPolicy>> {
        for (flag, hours) in
            [("--gpu-hours-per-user", self.gpu_hours_per_user), ("--cpu-hours-per-user", self.cpu_hours_per_user)]
        {
            if let Some(hours) = hours {
                crate::domain::budget::check_hours(hours)
                    .map_err(|message| anyhow::anyhow!("{flag} {hours} {message}"))?;
            }
        }
        let flag = match (self.gpu_hours_per_user, self.cpu_hours_per_user) {
            (None, None) => return Ok(None),
            (Some(_), _) => "--gpu-hours-per-user",
            (None, Some(_)) => "--cpu-hours-per-user",
        };
        let Some(default_time_limit) = default_time_limit else {
            anyhow::bail!(
                "{flag} needs --default-time-limit: a job's time limit is what a budget counts before it runs; \
                 set --default-time-limit (e.g. 6h) too"
            );
        };
        Ok(Some(crate::budgets::BudgetPolicy::new(
            self.gpu_hours_per_user,
            self.cpu_hours_per_user,
            self.budget_period,
            default_time_limit,
            max_jobs_per_gpu,
            inventory,
        )))
    }
}

/// Bytes in `gigabytes` GB (10⁹ bytes, as the flags say), rounded down; negative or NaN is 0.
pub fn bytes_from_gigabytes(gigabytes: f64) -> u64 {
    // `as` saturates: negative and NaN become 0, huge values u64::MAX.
    (gigabytes * 1e9) as u64
}

/// Bytes in `mebibytes` MiB (2²⁰ bytes: the reserve file has always been sized this way).
pub fn bytes_from_mebibytes(mebibytes: u64) -> u64 {
    mebibytes << 20
}

/// `trainq serve`'s listening address, its TLS certificate, and its public URL.
#[derive(Debug, Clone, Args)]
pub struct ListenConfig {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "TRAINQ_LISTEN", default_value = "127.0.0.1:8080", display_order = 1)]
    pub listen: SocketAddr,
    /// Serve HTTPS (TLS 1.2 and 1.3) with this PEM certificate chain, the server's own first; with
    /// --tls-key. Re-read on SIGHUP and when the file changes: new connections get the new one.
    #[arg(long, env = "TRAINQ_TLS_CERT", display_order = 1)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "TRAINQ_TLS_KEY", display_order = 1)]
    pub tls_key: Option<PathBuf>,
    /// The URL compute nodes reach this server at (workers report there), and the base of the
    /// dashboard links in notifications. Default: http:// (https:// with --tls-cert) and the
    /// address it listens on.
    #[arg(long, env = "TRAINQ_PUBLIC_URL", display_order = 28)]
    pub public_url: Option<String>,
}

impl ListenConfig {
    /// The URL workers and notification links use, given the address the server is bound to
    /// (which differs from `--listen` when that asks for port 0).
    pub fn public_url(&self, bound: SocketAddr, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        self.public_url.clone().unwrap_or_else(|| format!("{scheme}://{bound}"))
    }
}

/// `trainq serve`'s folders and disk limits.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Holds `trainq.db` and one folder per job.
    #[arg(long, env = "TRAINQ_DATA_DIR", default_value = "trainq-data", display_order = 2)]
    pub data_dir: PathBuf,
    /// Datasets root: each subfolder is a dataset in ImageFolder layout. Default: DATA_DIR/datasets.
    #[arg(long, env = "TRAINQ_DATASETS", display_order = 3)]
    pub datasets: Option<PathBuf>,
    /// Pretrained backbone files (`vgg16.safetensors`, torchvision names). Default: DATA_DIR/weights.
    #[arg(long, env = "TRAINQ_WEIGHTS", display_order = 4)]
    pub weights: Option<PathBuf>,
    /// Most gigabytes the shared cache (decoded images and frozen-layer activations, under
    /// DATA_DIR/cache) may hold; the least recently used entries are evicted beyond it.
    #[arg(long, env = "TRAINQ_CACHE_MAX_GB", default_value_t = 50.0, display_order = 6)]
    pub cache_max_gb: f64,
    /// No job starts unless this many gigabytes would stay free, after what it will write, on
    /// each folder's filesystem (data dir, job folders, cache); below it the cache is evicted first.
    #[arg(long, env = "TRAINQ_DISK_LOW_WATER_GB", default_value_t = 2.0, display_order = 7)]
    pub disk_low_water_gb: f64,
    /// Megabytes kept in `DATA_DIR/trainq.reserve` and given up when the disk fills, so the
    /// queue's own state (a job's end, a re-queue) can still be written; while it is given up,
    /// requests that would write answer 507. 0 disables it.
    #[arg(long, env = "TRAINQ_DISK_RESERVE_MB", default_value_t = 64, display_order = 8)]
    pub disk_reserve_mb: u64,
    /// How often one job may go back to the queue because the disk refused a write (it then
    /// resumes from its last checkpoint once there is room) before it fails, naming the disk.
    #[arg(long, env = "TRAINQ_MAX_STORAGE_RETRIES", default_value_t = 5, display_order = 9)]
    pub max_storage_retries: u32,
    /// Serve the dashboard's files from this folder (for editing them without a rebuild).
    /// Default: the files compiled into the binary.
    #[arg(long, env = "TRAINQ_STATIC_DIR", display_order = 15)]
    pub static_dir: Option<PathBuf>,
    /// Generate the demo dataset `chest_xray_demo` in the datasets folder if it is missing.
    #[arg(long, env = "TRAINQ_DEMO", display_order = 16)]
    pub demo: bool,
    /// Folder for job folders and the shared cache, visible at the same path on compute nodes
    /// (Slurm). Default: DATA_DIR. The database stays in DATA_DIR.
    #[arg(long, env = "TRAINQ_SHARED_DIR", display_order = 29)]
    pub shared_dir: Option<PathBuf>,
}

/// The folders of [`StorageConfig`], created and made absolute (workers run in their own
/// folders, so every path they get must be absolute).
#[derive(Debug, Clone)]
pub struct StorageFolders {
    /// Holds `trainq.db` (and the reserve file).
    pub data_dir: PathBuf,
    /// Holds the job folders (`jobs/`) and the shared cache (`cache/`): `--shared-dir`, or the
    /// data folder.
    pub work_dir: PathBuf,
    /// The datasets root.
    pub datasets: PathBuf,
    /// The pretrained weights folder.
    pub weights: PathBuf,
}

impl StorageConfig {
    /// Creates the folders and resolves them, defaults filled in.
    pub fn folders(&self) -> anyhow::Result<StorageFolders> {
        let data_dir = absolute_dir(&self.data_dir)?;
        let datasets = absolute_dir(&self.datasets.clone().unwrap_or_else(|| data_dir.join("datasets")))?;
        let weights = absolute_dir(&self.weights.clone().unwrap_or_else(|| data_dir.join("weights")))?;
        let work_dir = match &self.shared_dir {
            Some(dir) => absolute_dir(dir)?,
            None => data_dir.clone(),
        };
        Ok(StorageFolders { data_dir, work_dir, datasets, weights })
    }

    /// The disk limits, in bytes.
    pub fn disk_settings(&self) -> crate::disk_space::DiskSettings {
        crate::disk_space::DiskSettings {
            low_water_bytes: bytes_from_gigabytes(self.disk_low_water_gb),
            reserve_bytes: bytes_from_mebibytes(self.disk_reserve_mb),
            max_storage_attempts: self.max_storage_retries,
        }
    }

    /// The shared cache's budget, in bytes.
    pub fn cache_budget_bytes(&self) -> u64 {
        bytes_from_gigabytes(self.cache_max_gb)
    }
}

/// Creates `path` if needed and makes it absolute.
pub fn absolute_dir(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    path.canonicalize().with_context(|| format!("resolving {}", path.display()))
}

/// `trainq serve`'s worker processes.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// How many CPU jobs may run at once when there is no GPU.
    #[arg(long, env = "TRAINQ_CPU_SLOTS", default_value_t = 1, display_order = 5)]
    pub cpu_slots: usize,
    /// Ignore GPUs even if NVML finds some (run on CPU slots).
    #[arg(long, env = "TRAINQ_NO_GPU", display_order = 10)]
    pub no_gpu: bool,
    /// The worker executable. Default: `trainq-worker` beside this binary.
    #[arg(long, env = "TRAINQ_WORKER", display_order = 11)]
    pub worker: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping a worker.
    #[arg(long, env = "TRAINQ_KILL_GRACE_SECS", default_value_t = 10, display_order = 12)]
    pub kill_grace_secs: u64,
    /// On SIGTERM the server stops starting jobs and gives running workers this many seconds to
    /// save a checkpoint and exit (they resume at the next start), then exits 0.
    #[arg(long, env = "TRAINQ_SHUTDOWN_GRACE_SECS", default_value_t = 30, display_order = 13)]
    pub shutdown_grace_secs: u64,
    /// Most memory (GB of address space) one CPU worker may use; over it, its allocation fails
    /// and the job fails with "out of memory" (or is retried with half the batch). Default: no limit.
    #[arg(long, env = "TRAINQ_WORKER_MAX_MEMORY_GB", display_order = 14)]
    pub worker_max_memory_gb: Option<f64>,
}

/// [`WorkerConfig`] checked and in the supervisor's units.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The worker executable.
    pub program: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping a worker.
    pub kill_grace: Duration,
    /// At server shutdown: how long running workers get to checkpoint and exit.
    pub shutdown_grace: Duration,
    /// Private-memory limit of a CPU worker, bytes; `None`: no limit.
    pub cpu_memory_limit: Option<u64>,
}

impl WorkerConfig {
    /// Checks the memory limit and finds the worker program.
    pub fn settings(&self) -> anyhow::Result<WorkerSettings> {
        use anyhow::Context;
        if let Some(gb) = self.worker_max_memory_gb {
            // Measured: libtorch alone needs about 0.7 GB of private memory to load.
            anyhow::ensure!(
                gb >= 1.0,
                "--worker-max-memory-gb {gb} is too small: a worker needs about 1 GB just to load libtorch"
            );
        }
        let program = match &self.worker {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("locating the trainq binary")?.with_file_name("trainq-worker"),
        };
        Ok(WorkerSettings {
            program,
            kill_grace: Duration::from_secs(self.kill_grace_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            cpu_memory_limit: self.worker_max_memory_gb.map(|gb| bytes_from_gigabytes(gb.max(0.1))),
        })
    }
}

/// `trainq serve`'s limits on what one user may ask for.
#[derive(Debug, Clone, Args)]
pub struct UserLimitsConfig {
    /// Requests a minute one user may make (bursts of a quarter of it); over it: 429 + Retry-After.
    #[arg(long, env = "TRAINQ_RATE_LIMIT_PER_MINUTE", default_value_t = 600, display_order = 17)]
    pub rate_limit_per_minute: u32,
    /// Jobs one student may have queued or running at once (admins are exempt).
    #[arg(long, env = "TRAINQ_MAX_JOBS_PER_USER", default_value_t = 50, display_order = 18)]
    pub max_jobs_per_user: u32,
    /// Most epochs (all phases together) one job may ask for.
    #[arg(long, env = "TRAINQ_MAX_EPOCHS", default_value_t = 1000, display_order = 19)]
    pub max_epochs: u32,
    /// Largest image side a job may ask for (`image_size`, or `max_image_side` with variable size).
    #[arg(long, env = "TRAINQ_MAX_IMAGE_SIDE", default_value_t = 1024, display_order = 34)]
    pub max_image_side: u32,
    /// Most disk (GB, fractions allowed) one user's job folders may hold: at or over it, their
    /// submits answer 507 naming the quota, their usage and their largest jobs. Admins are
    /// exempt. Default: no quota.
    #[arg(long, env = "TRAINQ_MAX_DISK_PER_USER_GB", display_order = 35)]
    pub max_disk_per_user_gb: Option<f64>,
    /// Most gigabytes a dataset archive may unpack to (`trainq admin datasets import`); a larger
    /// one is refused before it fills the disk.
    #[arg(long, env = "TRAINQ_MAX_DATASET_GB", default_value_t = 20.0, display_order = 35)]
    pub max_dataset_gb: f64,
    /// Days a token works after it was made: an older one answers 401 "token expired", and
    /// students rotate theirs before then (`trainq token rotate`). Default: tokens never expire.
    #[arg(long, env = "TRAINQ_TOKEN_TTL_DAYS", display_order = 43)]
    pub token_ttl_days: Option<f64>,
    /// The device time a job without a `time_limit` of its own may use over all its runs
    /// ("6h", "90m", "2d" or seconds); at it, the job stops with a checkpoint and ends `timeout`.
    /// Default: no limit.
    #[arg(long, env = "TRAINQ_DEFAULT_TIME_LIMIT", display_order = 50)]
    pub default_time_limit: Option<crate::domain::TimeLimit>,
    /// The longest `time_limit` a job may ask for (a longer one is refused with a 422). Default:
    /// 30 days.
    #[arg(long, env = "TRAINQ_MAX_TIME_LIMIT", display_order = 51)]
    pub max_time_limit: Option<crate::domain::TimeLimit>,
}

impl UserLimitsConfig {
    /// The limits the API enforces; `half_life_secs` is fair share's, which `/metrics` reports
    /// usage with.
    pub fn settings(&self, half_life_secs: f64) -> anyhow::Result<crate::http::Limits> {
        let time_limits = crate::domain::time_limit::TimeLimitPolicy::new(self.default_time_limit, self.max_time_limit)
            .map_err(anyhow::Error::msg)?;
        Ok(crate::http::Limits {
            rate: crate::http::RateLimiter::new(self.rate_limit_per_minute.max(1)),
            max_jobs_per_user: self.max_jobs_per_user,
            max_epochs: self.max_epochs,
            max_image_side: self.max_image_side,
            half_life_secs,
            max_disk_bytes_per_user: self.max_disk_per_user_gb.map(bytes_from_gigabytes),
            max_dataset_bytes: bytes_from_gigabytes(self.max_dataset_gb),
            token_ttl_secs: self.token_ttl_days.map(|days| days.max(0.0) * 86_400.0),
            time_limits,
            budgets: None,
        })
    }
}

/// `trainq serve`'s sharing of devices between jobs and users.
#[derive(Debug, Clone, Args)]
pub struct SchedulingConfig {
    /// Most jobs packed onto one GPU at once (when their memory estimates fit).
    #[arg(long, env = "TRAINQ_MAX_JOBS_PER_GPU", default_value_t = 2, display_order = 30)]
    pub max_jobs_per_gpu: usize,
    /// GPU memory (GB) kept free beyond the estimates of the jobs packed on a GPU.
    #[arg(long, env = "TRAINQ_GPU_HEADROOM_GB", default_value_t = 1.0, display_order = 31)]
    pub gpu_headroom_gb: f64,
    /// Most jobs one user may have running at once (default: no cap beyond fair share).
    #[arg(long, env = "TRAINQ_MAX_RUNNING_PER_USER", display_order = 32)]
    pub max_running_per_user: Option<usize>,
    /// Fair share: past device time counts half as much after this many hours.
    #[arg(long, env = "TRAINQ_FAIR_SHARE_HALF_LIFE_HOURS", default_value_t = 24.0, display_order = 33)]
    pub fair_share_half_life_hours: f64,
}

impl SchedulingConfig {
    /// The scheduler's settings: packing and caps, and fair share's half-life in seconds (the
    /// API's `/metrics` reports usage with the same one).
    pub fn settings(&self) -> crate::scheduler::Settings {
        crate::scheduler::Settings {
            limits: crate::scheduler::policy::Limits {
                max_jobs_per_gpu: self.max_jobs_per_gpu.max(1),
                headroom_bytes: bytes_from_gigabytes(self.gpu_headroom_gb),
                max_running_per_user: self.max_running_per_user,
            },
            half_life_secs: self.fair_share_half_life_hours.max(0.001) * 3600.0,
            budgets: None,
        }
    }
}

/// Where jobs run (`--executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Worker processes on this box's GPUs or CPU slots.
    Local,
    /// Jobs handed to a Slurm cluster with sbatch.
    Slurm,
}

// Written out rather than derived: the derive would list the variants' doc comments in `--help`,
// which has always shown only the names.
impl clap::ValueEnum for ExecutorKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[ExecutorKind::Local, ExecutorKind::Slurm]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }))
    }
}

/// `trainq serve`'s executor, and the Slurm settings it uses when that is `slurm`.
#[derive(Debug, Clone, Args)]
pub struct ExecutorConfig {
    /// Where jobs run: `local` (worker processes on this box's GPUs or CPU slots) or `slurm`
    /// (handed to a Slurm cluster with sbatch; see deploy/slurm/).
    #[arg(long, env = "TRAINQ_EXECUTOR", default_value = "local", value_enum, display_order = 20)]
    pub executor: ExecutorKind,
    /// Slurm: jobs trainq keeps handed to Slurm at once (its fair share picks which).
    #[arg(long, env = "TRAINQ_SLURM_JOBS", default_value_t = 8, display_order = 21)]
    pub slurm_jobs: usize,
    /// Slurm: `--partition`.
    #[arg(long, env = "TRAINQ_SLURM_PARTITION", display_order = 22)]
    pub slurm_partition: Option<String>,
    /// Slurm: `--account`.
    #[arg(long, env = "TRAINQ_SLURM_ACCOUNT", display_order = 23)]
    pub slurm_account: Option<String>,
    /// Slurm: `--time`, e.g. `1-00:00:00`.
    #[arg(long, env = "TRAINQ_SLURM_TIME", display_order = 24)]
    pub slurm_time: Option<String>,
    /// Slurm: GPUs per job (`--gres=gpu:N`); 0 runs CPU jobs.
    #[arg(long, env = "TRAINQ_SLURM_GPUS", default_value_t = 1, display_order = 25)]
    pub slurm_gpus: u32,
    /// Slurm: `--cpus-per-task` (also the worker's threads).
    #[arg(long, env = "TRAINQ_SLURM_CPUS", default_value_t = 4, display_order = 26)]
    pub slurm_cpus: u32,
    /// Slurm: seconds between reads of a job's Slurm state.
    #[arg(long, env = "TRAINQ_SLURM_POLL_SECS", default_value_t = 5.0, display_order = 27)]
    pub slurm_poll_secs: f64,
    /// Slurm: the CA (PEM) that signed this server's TLS certificate, as a path compute nodes can
    /// read (e.g. under `--shared-dir`); the relay trusts it besides the usual roots. Needed only
    /// when the certificate is not from a CA the nodes already trust.
    #[arg(long, env = "TRAINQ_SLURM_CA_FILE", display_order = 27)]
    pub slurm_ca_file: Option<PathBuf>,
}

impl ExecutorConfig {
    /// The Slurm executor's settings, or `None` for the local one. `public_url` is where compute
    /// nodes reach this server (see [`ListenConfig::public_url`]).
    pub fn slurm_settings(&self, public_url: String) -> Option<crate::supervisor::slurm::SlurmConfig> {
        match self.executor {
            ExecutorKind::Local => None,
            ExecutorKind::Slurm => Some(crate::supervisor::slurm::SlurmConfig {
                partition: self.slurm_partition.clone(),
                account: self.slurm_account.clone(),
                time: self.slurm_time.clone(),
                gpus: self.slurm_gpus,
                cpus_per_job: self.slurm_cpus,
                public_url,
                relay_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trainq")),
                relay_ca_file: self.slurm_ca_file.clone(),
                poll: Duration::from_secs_f64(self.slurm_poll_secs.max(0.1)),
            }),
        }
    }
}

/// `trainq serve`'s retention of old finished jobs.
#[derive(Debug, Clone, Args)]
pub struct RetentionConfig {
    /// Once a day, prune (or with an empty `--retention-keep`, delete) finished jobs that ended
    /// more than this many days ago. 0: off.
    #[arg(long, env = "TRAINQ_RETENTION_DAYS", default_value_t = 0, display_order = 36)]
    pub retention_days: u32,
    /// What retention keeps of an old job: comma-separated file names, folders or `*` patterns
    /// (as `trainq admin gc --keep`); empty: delete the whole job (a tombstone stays).
    #[arg(long, env = "TRAINQ_RETENTION_KEEP", default_value = crate::domain::retention::DEFAULT_RETENTION_KEEP, display_order = 37)]
    pub retention_keep: String,
}

/// What [`RetentionConfig`] asks for, parsed.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Jobs that ended more than this many days ago are retained.
    pub days: u32,
    /// What is kept of them; `None`: they are deleted outright (tombstones stay).
    pub keep: Option<crate::domain::retention::KeepList>,
}

impl RetentionConfig {
    /// The retention to run, or `None` when it is off.
    pub fn settings(&self) -> anyhow::Result<Option<RetentionSettings>> {
        if self.retention_days == 0 {
            return Ok(None);
        }
        let keep = match self.retention_keep.trim() {
            "" => None,
            list => Some(
                crate::domain::retention::KeepList::parse(&[list])
                    .map_err(|message| anyhow::anyhow!("--retention-keep: {message}"))?,
            ),
        };
        Ok(Some(RetentionSettings { days: self.retention_days, keep }))
    }
}

/// `trainq serve`'s delivery of job notifications.
#[derive(Debug, Clone, Args)]
pub struct NotificationConfig {
    /// Notifications: the SMTP server emails go through, credentials in the URL:
    /// `smtps://user:password@mail.example.org` (TLS), `smtp://mail.example.org:587?tls=required`
    /// (STARTTLS), `smtp://localhost:25` (a local relay, unencrypted). Default: no email (webhooks
    /// still go out; emails wait and fail, visible to the admin).
    #[arg(long, env = "TRAINQ_SMTP_URL", display_order = 38)]
    pub smtp_url: Option<String>,
    /// Notifications: a PEM file of the certificate authority the SMTP server's TLS certificate
    /// comes from, trusted besides the public ones (a campus CA); for `smtps://` and
    /// `?tls=required`.
    #[arg(long, env = "TRAINQ_SMTP_CA_FILE", display_order = 39)]
    pub smtp_ca_file: Option<PathBuf>,
    /// Notifications: the emails' sender, e.g. `trainq <trainq@gpubox.example.org>`.
    #[arg(long, env = "TRAINQ_SMTP_FROM", default_value = "trainq <trainq@localhost>", display_order = 40)]
    pub smtp_from: String,
    /// Notifications: seconds before a failed delivery's first retry; each later retry waits
    /// twice as long (at most an hour).
    #[arg(long, env = "TRAINQ_NOTIFY_RETRY_SECS", default_value_t = 30.0, display_order = 41)]
    pub notify_retry_secs: f64,
    /// Notifications: attempts before a delivery is given up (`failed`, listed for the admin at
    /// `GET /api/admin/notifications?state=failed`).
    #[arg(long, env = "TRAINQ_NOTIFY_MAX_ATTEMPTS", default_value_t = 12, display_order = 42)]
    pub notify_max_attempts: u32,
}

impl NotificationConfig {
    /// The notifier's settings (with a mailer when `--smtp-url` is set); `public_url` is the
    /// base of the dashboard links (see [`ListenConfig::public_url`]).
    pub fn settings(&self, public_url: String) -> anyhow::Result<crate::notify::NotifierSettings> {
        let mailer = match &self.smtp_url {
            Some(url) => Some(crate::notify::email::Mailer::new(url, &self.smtp_from, self.smtp_ca_file.as_deref())?),
            None => None,
        };
        Ok(crate::notify::NotifierSettings {
            mailer,
            public_url,
            retry_base: Duration::from_secs_f64(self.notify_retry_secs.max(0.05)),
            max_attempts: self.notify_max_attempts.max(1),
        })
    }
}

/// `trainq serve`'s scheduled backups of the database.
#[derive(Debug, Clone, Args)]
pub struct BackupConfig {
    /// Backups: a folder for scheduled snapshots of the database (`trainq-<UTC time>.db`, each
    /// written atomically and integrity-checked). Default: no scheduled backups.
    #[arg(long, env = "TRAINQ_BACKUP_DIR", display_order = 43)]
    pub backup_dir: Option<PathBuf>,
    /// Backups: time between two snapshots: `6h`, `30m`, `1d`.
    #[arg(long, env = "TRAINQ_BACKUP_EVERY", default_value = "6h", display_order = 44)]
    pub backup_every: String,
    /// Backups: how many snapshots to keep; the oldest beyond it are removed.
    #[arg(long, env = "TRAINQ_BACKUP_KEEP", default_value_t = 28, display_order = 45)]
    pub backup_keep: usize,
}

impl BackupConfig {
    /// The schedule, or `None` without `--backup-dir`.
    pub fn schedule(&self) -> anyhow::Result<Option<crate::backup::BackupSchedule>> {
        let Some(dir) = &self.backup_dir else { return Ok(None) };
        let every = crate::domain::retention::parse_age(&self.backup_every)
            .map_err(|message| anyhow::anyhow!("--backup-every: {message}"))?;
        anyhow::ensure!(self.backup_keep > 0, "--backup-keep: keep at least 1 snapshot");
        Ok(Some(crate::backup::BackupSchedule { dir: dir.clone(), every, keep: self.backup_keep }))
    }
}

/// `trainq demo-data`.
#[derive(Debug, Clone, Args)]
pub struct DemoDataArgs {
    /// The dataset folder to create (e.g. DATASETS/chest_xray_demo).
    pub dir: PathBuf,
    /// Training images per class.
    #[arg(long, default_value_t = 150)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 10)]
    pub val_per_class: usize,
    /// Test images per class.
    #[arg(long, default_value_t = 50)]
    pub test_per_class: usize,
    /// Nominal image side in pixels (each image varies a little around it).
    #[arg(long, default_value_t = 96)]
    pub size: u32,
    /// Seed for the generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// `trainq weights`.
#[derive(Debug, Clone, Args)]
pub struct WeightsArgs {
    /// What to do with the weights folder.
    #[command(subcommand)]
    pub command: WeightsCommand,
}

/// The `trainq weights` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum WeightsCommand {
    /// Download a backbone's ImageNet weights, check every tensor against torchvision's layout,
    /// and install them as `<weights dir>/<backbone>.safetensors`.
    Fetch(WeightsFetchArgs),
}

/// `trainq weights fetch`.
#[derive(Debug, Clone, Args)]
pub struct WeightsFetchArgs {
    /// The backbone whose weights to install.
    #[arg(value_parser = backbone_parser())]
    pub backbone: Backbone,
    /// Where to download the safetensors file from. Default: torchvision's ImageNet weights as
    /// published by timm on Hugging Face (`timm/<backbone>.tv_in1k`).
    #[arg(long)]
    pub url: Option<String>,
    /// The server's data folder; only used to find the default weights folder, as `serve` does.
    #[arg(long, env = "TRAINQ_DATA_DIR", default_value = "trainq-data")]
    pub data_dir: PathBuf,
    /// The weights folder `serve` reads. Default: DATA_DIR/weights.
    #[arg(long, env = "TRAINQ_WEIGHTS")]
    pub weights: Option<PathBuf>,
}

impl WeightsFetchArgs {
    /// The folder to install into: the same one `trainq serve` would read with these settings.
    pub fn weights_dir(&self) -> PathBuf {
        self.weights.clone().unwrap_or_else(|| self.data_dir.join("weights"))
    }
}

/// Accepts the spec's backbone names (`vgg16`, `inception_v3`) and lists them in `--help`.
fn backbone_parser() -> impl TypedValueParser<Value = Backbone> {
    PossibleValuesParser::new(Backbone::ALL.map(Backbone::name)).map(|name| {
        Backbone::ALL.into_iter().find(|backbone| backbone.name() == name).expect("a listed possible value")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_names_flags_and_rejects_unknown_keys() {
        let variables =
            config_variables("listen = \"0.0.0.0:80\"\ncpu-slots = 2\ncache_max_gb = 7.5\nno_gpu = true\n").unwrap();
        assert_eq!(
            variables,
            [
                (String::from("TRAINQ_CACHE_MAX_GB"), String::from("7.5")),
                (String::from("TRAINQ_CPU_SLOTS"), String::from("2")),
                (String::from("TRAINQ_LISTEN"), String::from("0.0.0.0:80")),
                (String::from("TRAINQ_NO_GPU"), String::from("true")),
            ]
        );
        let err = config_variables("cpu_slot = 2").unwrap_err().to_string();
        assert!(err.contains("unknown key `cpu_slot`") && err.contains("cpu_slots"), "{err}");
        assert!(config_variables("listen = [1]").is_err());
    }

    /// Every `trainq serve` long flag as one line: `--name ENV default=… value|switch`, in the
    /// order `--help` lists them.
    fn serve_flags() -> Vec<String> {
        use clap::CommandFactory;
        let mut command = Cli::command();
        command.build();
        let serve = command.find_subcommand("serve").expect("serve is a subcommand");
        let mut arguments: Vec<&clap::Arg> = serve.get_arguments().filter(|arg| arg.get_long().is_some()).collect();
        arguments.sort_by_key(|arg| arg.get_display_order());
        arguments
            .into_iter()
            .map(|arg| {
                let env = arg.get_env().map(|env| env.to_string_lossy().into_owned()).unwrap_or_default();
                let defaults: Vec<String> =
                    arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
                let kind = if arg.get_action().takes_values() { "value" } else { "switch" };
                let choices: Vec<String> =
                    arg.get_possible_values().iter().map(|value| value.get_name().to_string()).collect();
                let line =
                    format!("--{} {env} default={} {kind}", arg.get_long().unwrap_or_default(), defaults.join(","));
                if choices.is_empty() {
                    line
                } else {
                    format!("{line} {}", choices.join(","))
                }
            })
            .collect()
    }

    /// The flags, variables and defaults of `trainq serve` as they were before configuration was
    /// split into groups: users' scripts, unit files and config files depend on every one.
    #[test]
    fn serve_flags_variables_and_defaults_stay_as_they_are() {
        let expected = [
            "--config TRAINQ_CONFIG default= value",
            "--listen TRAINQ_LISTEN default=127.0.0.1:8080 value",
            "--tls-cert TRAINQ_TLS_CERT default= value",
            "--tls-key TRAINQ_TLS_KEY default= value",
            "--data-dir TRAINQ_DATA_DIR default=trainq-data value",
            "--datasets TRAINQ_DATASETS default= value",
            "--weights TRAINQ_WEIGHTS default= value",
            "--cpu-slots TRAINQ_CPU_SLOTS default=1 value",
            "--cache-max-gb TRAINQ_CACHE_MAX_GB default=50 value",
            "--disk-low-water-gb TRAINQ_DISK_LOW_WATER_GB default=2 value",
            "--disk-reserve-mb TRAINQ_DISK_RESERVE_MB default=64 value",
            "--max-storage-retries TRAINQ_MAX_STORAGE_RETRIES default=5 value",
            "--no-gpu TRAINQ_NO_GPU default=false switch",
            "--worker TRAINQ_WORKER default= value",
            "--kill-grace-secs TRAINQ_KILL_GRACE_SECS default=10 value",
            "--shutdown-grace-secs TRAINQ_SHUTDOWN_GRACE_SECS default=30 value",
            "--worker-max-memory-gb TRAINQ_WORKER_MAX_MEMORY_GB default= value",
            "--static-dir TRAINQ_STATIC_DIR default= value",
            "--demo TRAINQ_DEMO default=false switch",
            "--rate-limit-per-minute TRAINQ_RATE_LIMIT_PER_MINUTE default=600 value",
            "--max-jobs-per-user TRAINQ_MAX_JOBS_PER_USER default=50 value",
            "--max-epochs TRAINQ_MAX_EPOCHS default=1000 value",
            "--executor TRAINQ_EXECUTOR default=local value local,slurm",
            "--slurm-jobs TRAINQ_SLURM_JOBS default=8 value",
            "--slurm-partition TRAINQ_SLURM_PARTITION default= value",
            "--slurm-account TRAINQ_SLURM_ACCOUNT default= value",
            "--slurm-time TRAINQ_SLURM_TIME default= value",
            "--slurm-gpus TRAINQ_SLURM_GPUS default=1 value",
            "--slurm-cpus TRAINQ_SLURM_CPUS default=4 value",
            "--slurm-poll-secs TRAINQ_SLURM_POLL_SECS default=5 value",
            "--slurm-ca-file TRAINQ_SLURM_CA_FILE default= value",
            "--public-url TRAINQ_PUBLIC_URL default= value",
            "--shared-dir TRAINQ_SHARED_DIR default= value",
            "--max-jobs-per-gpu TRAINQ_MAX_JOBS_PER_GPU default=2 value",
            "--gpu-headroom-gb TRAINQ_GPU_HEADROOM_GB default=1 value",
            "--max-running-per-user TRAINQ_MAX_RUNNING_PER_USER default= value",
            "--fair-share-half-life-hours TRAINQ_FAIR_SHARE_HALF_LIFE_HOURS default=24 value",
            "--max-image-side TRAINQ_MAX_IMAGE_SIDE default=1024 value",
            "--max-disk-per-user-gb TRAINQ_MAX_DISK_PER_USER_GB default= value",
            "--max-dataset-gb TRAINQ_MAX_DATASET_GB default=20 value",
            "--retention-days TRAINQ_RETENTION_DAYS default=0 value",
            "--retention-keep TRAINQ_RETENTION_KEEP default=final.safetensors,*.json,*.csv,*.svg,*.png,log.txt,cam value",
            "--smtp-url TRAINQ_SMTP_URL default= value",
            "--smtp-ca-file TRAINQ_SMTP_CA_FILE default= value",
            "--smtp-from TRAINQ_SMTP_FROM default=trainq <trainq@localhost> value",
            "--notify-retry-secs TRAINQ_NOTIFY_RETRY_SECS default=30 value",
            "--notify-max-attempts TRAINQ_NOTIFY_MAX_ATTEMPTS default=12 value",
            "--token-ttl-days TRAINQ_TOKEN_TTL_DAYS default= value",
            "--backup-dir TRAINQ_BACKUP_DIR default= value",
            "--backup-every TRAINQ_BACKUP_EVERY default=6h value",
            "--backup-keep TRAINQ_BACKUP_KEEP default=28 value",
            "--default-time-limit TRAINQ_DEFAULT_TIME_LIMIT default= value",
            "--max-time-limit TRAINQ_MAX_TIME_LIMIT default= value",
            "--gpu-hours-per-user TRAINQ_GPU_HOURS_PER_USER default= value",
            "--cpu-hours-per-user TRAINQ_CPU_HOURS_PER_USER default= value",
            "--budget-period TRAINQ_BUDGET_PERIOD default=30 value",
            "--help  default= switch",
        ];
        assert_eq!(serve_flags(), expected);
    }

    /// A value for every `trainq serve` key, none of them the default, as a config file writes it.
    const CONFIG_FILE_SAMPLES: [(&str, &str); 56] = [
        ("config", r#""/etc/trainq/other.toml""#),
        ("listen", r#""0.0.0.0:9""#),
        ("tls_cert", r#""/etc/trainq/cert.pem""#),
        ("tls_key", r#""/etc/trainq/key.pem""#),
        ("data_dir", r#""/srv/data""#),
        ("datasets", r#""/srv/datasets""#),
        ("weights", r#""/srv/weights""#),
        ("cpu_slots", "3"),
        ("cache_max_gb", "7.5"),
        ("disk_low_water_gb", "20"),
        ("disk_reserve_mb", "256"),
        ("max_storage_retries", "9"),
        ("no_gpu", "true"),
        ("worker", r#""/usr/bin/trainq-worker""#),
        ("kill_grace_secs", "11"),
        ("shutdown_grace_secs", "60"),
        ("worker_max_memory_gb", "16"),
        ("static_dir", r#""/srv/static""#),
        ("demo", "true"),
        ("rate_limit_per_minute", "60"),
        ("max_jobs_per_user", "30"),
        ("max_epochs", "400"),
        ("executor", r#""slurm""#),
        ("slurm_jobs", "16"),
        ("slurm_partition", r#""gpu""#),
        ("slurm_account", r#""class""#),
        ("slurm_time", r#""1-00:00:00""#),
        ("slurm_gpus", "2"),
        ("slurm_cpus", "8"),
        ("slurm_poll_secs", "0.5"),
        ("slurm_ca_file", r#""/shared/campus-ca.pem""#),
        ("public_url", r#""http://gpubox:8080""#),
        ("shared_dir", r#""/shared""#),
        ("max_jobs_per_gpu", "3"),
        ("gpu_headroom_gb", "2.5"),
        ("max_running_per_user", "2"),
        ("fair_share_half_life_hours", "12"),
        ("max_image_side", "512"),
        ("max_disk_per_user_gb", "0.5"),
        ("max_dataset_gb", "3"),
        ("retention_days", "30"),
        ("retention_keep", r#""final.safetensors,plots""#),
        ("smtp_url", r#""smtp://localhost:25""#),
        ("smtp_ca_file", r#""/etc/ssl/campus.pem""#),
        ("smtp_from", r#""trainq <q@example.org>""#),
        ("notify_retry_secs", "2.5"),
        ("notify_max_attempts", "3"),
        ("token_ttl_days", "90"),
        ("backup_dir", r#""/srv/backups""#),
        ("backup_every", r#""1d""#),
        ("backup_keep", "7"),
        ("default_time_limit", r#""6h""#),
        ("max_time_limit", "43200"),
        ("gpu_hours_per_user", "24"),
        ("cpu_hours_per_user", "2.5"),
        ("budget_period", r#""2026-09-01""#),
    ];

    /// Parses `trainq serve` with these arguments and these variables set (and every other
    /// `TRAINQ_*` variable of `serve` unset), as the `Debug` text of its configuration.
    fn parse_serve(arguments: &[String], variables: &[(String, String)]) -> String {
        use clap::CommandFactory;
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve is a subcommand");
        for env in serve.get_arguments().filter_map(clap::Arg::get_env) {
            std::env::remove_var(env);
        }
        for (name, value) in variables {
            std::env::set_var(name, value);
        }
        let parsed =
            Cli::try_parse_from(["trainq", "serve"].into_iter().map(String::from).chain(arguments.iter().cloned()));
        for (name, _) in variables {
            std::env::remove_var(name);
        }
        match parsed.expect("serve's arguments parse").command {
            Command::Serve(config) => format!("{config:?}"),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Each key of a config file, under its flag's name with `_` or `-`, sets what the flag sets:
    /// the file works through the flags' variables, so a flag whose variable was renamed or
    /// dropped would silently stop being configurable from the file.
    #[test]
    fn every_flag_is_a_config_file_key_that_sets_what_the_flag_sets() {
        // This is the only test that sets `TRAINQ_*` variables; the lock keeps it so if more come.
        static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _environment = ENVIRONMENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let flags: Vec<String> = serve_flags()
            .iter()
            .filter_map(|line| line.split(' ').next()?.strip_prefix("--").map(str::to_string))
            .filter(|flag| flag != "help")
            .collect();
        let sampled: Vec<String> = CONFIG_FILE_SAMPLES.iter().map(|(key, _)| key.replace('_', "-")).collect();
        assert_eq!(sampled, flags, "every flag has a sample value, in --help's order");
        let defaults = parse_serve(&[], &[]);
        for (key, value) in CONFIG_FILE_SAMPLES {
            let flag = key.replace('_', "-");
            let argument = match value {
                "true" => vec![format!("--{flag}")],
                _ => vec![format!("--{flag}={}", value.trim_matches('"'))],
            };
            let from_flag = parse_serve(&argument, &[]);
            assert_ne!(from_flag, defaults, "--{flag} {value} is not the default");
            for spelling in [key.to_string(), flag.clone()] {
                let variables = config_variables(&format!("{spelling} = {value}")).unwrap();
                assert_eq!(parse_serve(&[], &variables), from_flag, "the config file's `{spelling} = {value}`");
            }
        }
    }

    /// The README's `trainq.toml` excerpts (the budgets, a course's settings) are config files
    /// `trainq serve` takes: known keys, values its flags accept.
    #[test]
    fn the_readme_config_excerpts_are_valid() {
        let readme = include_str!("../README.md");
        let excerpts: Vec<&str> =
            readme.split("```toml\n").skip(1).filter_map(|rest| rest.split("```").next()).collect();
        assert!(excerpts.len() >= 2, "the budgets' and the course's excerpts");
        for excerpt in excerpts {
            assert!(!config_variables(excerpt).unwrap().is_empty(), "{excerpt}");
            let table: toml::Table = excerpt.parse().unwrap();
            let flags = table.iter().map(|(key, value)| match value {
                toml::Value::String(text) => format!("--{}={text}", key.replace('_', "-")),
                other => format!("--{}={other}", key.replace('_', "-")),
            });
            let arguments = ["trainq", "serve"].into_iter().map(String::from).chain(flags);
            Cli::try_parse_from(arguments).unwrap_or_else(|err| panic!("{excerpt}: {err}"));
        }
    }

    #[test]
    fn the_example_configs_are_valid() {
        for text in [include_str!("../deploy/trainq.toml"), include_str!("../deploy/slurm/trainq.toml")] {
            assert!(!config_variables(text).unwrap().is_empty());
        }
    }
}
