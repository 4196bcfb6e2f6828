//! `trainq serve`: opens the store, re-queues jobs a dead server left running, starts the
//! scheduler, and serves the API until the process ends.

use crate::config::{ServeConfig, StorageFolders, WorkerSettings};
use crate::devices::Inventory;
use crate::disk_space::Disk;
use crate::events::EventBus;
use crate::http::{self, AppState, Paths};
use crate::scheduler::{self, Inputs, SchedulerHandle};
use crate::store::Store;
use crate::supervisor::slurm::SlurmConfig;
use crate::supervisor::{Executor, Supervisor, SupervisorConfig};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The demo dataset's name under the datasets folder.
pub const DEMO_DATASET: &str = "chest_xray_demo";

/// Runs the server: folders, database, listener, supervisor, the background tasks, then the API
/// until SIGTERM. Every setting arrives in its unit from its group of [`ServeConfig`].
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let folders = config.storage.folders()?;
    let backup_schedule = config.backups.schedule()?;
    if let Some(schedule) = &backup_schedule {
        schedule.check_folder()?;
    }
    // Before the database is touched: a second server must not re-queue this one's running jobs.
    let _data_dir_locks = crate::data_dir_lock::DataDirLock::acquire_all(&[&folders.data_dir, &folders.work_dir])?;
    let workers = config.workers.settings()?;
    if config.storage.demo {
        write_demo_dataset_if_missing(&folders.datasets).await?;
    }
    let disk = Disk::new(
        &folders.data_dir,
        &folders.work_dir.join("jobs"),
        &folders.work_dir.join("cache"),
        config.storage.disk_settings(),
    );
    // A certificate that cannot be used stops the start before anything else, naming its file.
    let certificate = start_tls(&config.listen)?;
    let store = Store::open(&folders.data_dir).await.context("opening the database")?;
    requeue_jobs_left_running(&store, &disk).await?;
    let listener = tokio::net::TcpListener::bind(config.listen.listen)
        .await
        .with_context(|| format!("binding {}", config.listen.listen))?;
    let address = listener.local_addr()?;
    let transport = crate::tls::Transport::new(certificate.is_some(), address);
    if let Some(warning) = transport.clear_text_warning() {
        tracing::warn!(%address, "{warning}");
    }
    let public_url = config.listen.public_url(address, transport.tls);
    let slurm = config.executor.slurm_settings(public_url.clone()).map(Arc::new);
    let parts = Parts::new(store, disk, &config, slurm.as_deref());
    parts.scheduler.planned_at_least_up_to(parts.store.highest_seq().await?);
    let supervisor = parts.supervisor(&folders, &workers, slurm.clone());
    follow_jobs_left_on_slurm(&parts.store, &supervisor, &parts.telemetry, slurm.is_some()).await?;
    let budgets = config
        .budgets
        .policy(config.limits.default_time_limit, config.scheduling.max_jobs_per_gpu, &parts.inventory)?
        .map(Arc::new);
    let scheduling = scheduler::Settings { budgets: budgets.clone(), ..config.scheduling.settings() };
    let half_life_secs = scheduling.half_life_secs;
    parts.start_scheduler(&supervisor, &folders, config.storage.cache_budget_bytes(), scheduling);
    // Notifications of jobs' ends: the outbox the store fills, delivered in a task of its own.
    let notifier = config.notifications.settings(public_url)?;
    let welcome = http::WelcomeMail { wake: crate::notify::Wake::default(), by_email: notifier.mailer.is_some() };
    tokio::spawn(crate::notify::run(parts.store.clone(), parts.events.clone(), notifier, welcome.wake.clone()));
    start_retention(&parts.store, &supervisor, &parts.events, &config)?;
    let backups = start_backups(&parts.store, backup_schedule);
    let events = parts.events.clone();
    let services = Services { backups, transport, welcome, budgets };
    let state = parts.app_state(supervisor, folders, workers.program, &config, half_life_secs, services)?;
    // Tests and scripts read this line to find a port-0 server.
    println!("trainq listening on {}://{address}", if transport.tls { "https" } else { "http" });
    tracing::info!(%address, "serving");
    // SIGTERM: stop starting jobs, let running workers checkpoint and exit (they resume at the
    // next start), then stop serving. Open event streams never end by themselves; closing the
    // bus ends them so shutdown can finish.
    let stopping = state.supervisor.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping.shutdown().await;
        tracing::info!("every worker has stopped; closing the API");
        events.close();
    };
    http::serve(listener, certificate, state, shutdown).await?;
    Ok(())
}

/// What the API is given besides the [`Parts`]: the backups' status, the transport (TLS or not),
/// the welcome mails' wake-up and the device-hour budgets.
struct Services {
    backups: crate::backup::BackupStatus,
    transport: crate::tls::Transport,
    welcome: http::WelcomeMail,
    budgets: Option<Arc<crate::budgets::BudgetPolicy>>,
}

/// What every long-running part of the server shares: the database, the disk, the devices, the
/// event bus, the counters and the scheduler's wake-up handle. Made once by [`serve`], which hands
/// clones to the supervisor, the scheduler and the API.
struct Parts {
    store: Store,
    disk: Disk,
    inventory: Inventory,
    events: EventBus,
    /// One set of counters for the process: the supervisor and scheduler count into it, the HTTP
    /// layer counts requests, and `/metrics` reads it.
    telemetry: crate::telemetry::Telemetry,
    scheduler: SchedulerHandle,
}

impl Parts {
    /// The shared parts; the devices are Slurm's slots with the Slurm executor, else this box's
    /// GPUs (or CPU slots).
    fn new(store: Store, disk: Disk, config: &ServeConfig, slurm: Option<&SlurmConfig>) -> Parts {
        let inventory = match slurm {
            Some(slurm) => Inventory::slurm(config.executor.slurm_jobs, slurm.gpus, slurm.cpus_per_job as usize),
            None => Inventory::discover(config.workers.cpu_slots, !config.workers.no_gpu),
        };
        Parts {
            store,
            disk,
            inventory,
            events: EventBus::new(),
            telemetry: crate::telemetry::Telemetry::new(),
            scheduler: SchedulerHandle::default(),
        }
    }

    /// The supervisor, running workers here or handing them to Slurm.
    fn supervisor(
        &self,
        folders: &StorageFolders,
        workers: &WorkerSettings,
        slurm: Option<Arc<SlurmConfig>>,
    ) -> Supervisor {
        Supervisor::new(
            self.store.clone(),
            SupervisorConfig {
                data_dir: folders.work_dir.clone(),
                worker_program: workers.program.clone(),
                executor: match slurm {
                    Some(slurm) => Executor::Slurm(slurm),
                    None => Executor::Local,
                },
                kill_grace: workers.kill_grace,
                shutdown_grace: workers.shutdown_grace,
                cpu_memory_limit: workers.cpu_memory_limit,
            },
            self.scheduler.notifier(),
            self.events.clone(),
            self.inventory.clone(),
            self.disk.clone(),
            self.telemetry.clone(),
        )
    }

    /// Starts the scheduling loop, the one task that claims jobs.
    fn start_scheduler(
        &self,
        supervisor: &Supervisor,
        folders: &StorageFolders,
        cache_budget_bytes: u64,
        scheduling: scheduler::Settings,
    ) {
        let inputs = Inputs {
            datasets: folders.datasets.clone(),
            weights: folders.weights.clone(),
            data_dir: folders.work_dir.clone(),
            cache_budget_bytes,
            disk: self.disk.clone(),
        };
        tokio::spawn(scheduler::run(
            self.scheduler.clone(),
            self.store.clone(),
            self.inventory.clone(),
            supervisor.clone(),
            inputs,
            scheduling,
            self.events.clone(),
        ));
    }

    /// What every request handler is given; an error when the limits' settings contradict each
    /// other.
    fn app_state(
        self,
        supervisor: Supervisor,
        folders: StorageFolders,
        worker_program: PathBuf,
        config: &ServeConfig,
        half_life_secs: f64,
        services: Services,
    ) -> anyhow::Result<AppState> {
        let Services { backups, transport, welcome, budgets } = services;
        Ok(AppState::from(crate::http::AppParts {
            store: self.store,
            scheduler: self.scheduler,
            supervisor,
            inventory: self.inventory,
            events: self.events,
            disk: self.disk,
            paths: Arc::new(Paths {
                data_dir: folders.work_dir,
                datasets: folders.datasets,
                weights: folders.weights,
                static_dir: config.storage.static_dir.clone(),
                worker_program,
            }),
            limits: Arc::new(crate::http::Limits { budgets, ..config.limits.settings(half_life_secs)? }),
            tokens: Arc::default(),
            telemetry: self.telemetry,
            backups,
            transport,
            welcome,
            recent_inputs: crate::submit::RecentInputs::default(),
        }))
    }
}

/// `--tls-cert` and `--tls-key`: the certificate, loaded and checked, re-read from then on when
/// its files change or on SIGHUP; `None` for plain HTTP.
fn start_tls(listen: &crate::config::ListenConfig) -> anyhow::Result<Option<Arc<crate::tls::ReloadingCertificate>>> {
    let Some(files) = crate::tls::CertificateFiles::from_flags(listen.tls_cert.as_deref(), listen.tls_key.as_deref())?
    else {
        return Ok(None);
    };
    let certificate = crate::tls::ReloadingCertificate::load(files)?;
    Arc::clone(&certificate).keep_fresh().context("watching for SIGHUP")?;
    Ok(Some(certificate))
}

/// `--demo`: writes the demo dataset into the datasets folder unless it is there already.
async fn write_demo_dataset_if_missing(datasets: &Path) -> anyhow::Result<()> {
    let target = datasets.join(DEMO_DATASET);
    if target.exists() {
        return Ok(());
    }
    let options = crate::demo_data::DemoOptions::default();
    let summary = tokio::task::spawn_blocking(move || crate::demo_data::write(&target, &options)).await??;
    tracing::info!(%summary, "generated the demo dataset");
    Ok(())
}

/// Puts the jobs a dead server left running back in the queue (they resume from a checkpoint).
async fn requeue_jobs_left_running(store: &Store, disk: &Disk) -> anyhow::Result<()> {
    // A server restarted onto a full disk still records what the last one left running: the
    // reserve makes room for it.
    let requeued = loop {
        match store.requeue_running().await {
            Err(err) if err.is_disk_full() && disk.release_reserve() => continue,
            result => break result?,
        }
    };
    if !requeued.is_empty() {
        tracing::warn!(count = requeued.len(), "re-queued jobs left running by a previous server");
    }
    Ok(())
}

/// Jobs Slurm kept running while no server was here: follows them again, or, when this server
/// runs without the Slurm executor, fails them (nothing would ever notice their end).
async fn follow_jobs_left_on_slurm(
    store: &Store,
    supervisor: &Supervisor,
    telemetry: &crate::telemetry::Telemetry,
    slurm_executor: bool,
) -> anyhow::Result<()> {
    for (job, slurm_id) in store.running_elsewhere().await? {
        if slurm_executor {
            supervisor.reattach(&job, slurm_id).await;
        } else {
            let reason =
                format!("the server restarted without the Slurm executor; Slurm job {slurm_id} is no longer followed");
            tracing::warn!(job_id = %job.id, %reason);
            if store.finish_job(job.id, crate::domain::JobState::Failed, Some(&reason)).await? {
                telemetry.job_finished(crate::domain::JobState::Failed);
            }
        }
    }
    Ok(())
}

/// Measures the disk usage of ended jobs never measured (users' usage counts every one), and
/// with `--retention-days` starts the daily retention of old jobs.
fn start_retention(
    store: &Store,
    supervisor: &Supervisor,
    events: &EventBus,
    config: &ServeConfig,
) -> anyhow::Result<()> {
    let retention = crate::retention::Retention::new(store.clone(), supervisor.clone(), events.clone());
    tokio::spawn(retention.clone().measure_unmeasured());
    if let Some(settings) = config.retention.settings()? {
        tokio::spawn(retention.retain(settings.days, settings.keep));
    }
    Ok(())
}

/// With `--backup-dir`, starts the scheduled snapshots; the status `/metrics` and `/readyz` read
/// either way (snapshots taken through the API count too).
fn start_backups(store: &Store, schedule: Option<crate::backup::BackupSchedule>) -> crate::backup::BackupStatus {
    let status = crate::backup::BackupStatus::new(schedule.as_ref().map(|schedule| schedule.every));
    if let Some(schedule) = schedule {
        tokio::spawn(crate::backup::run_schedule(store.clone(), schedule, status.clone()));
    }
    status
}

/// `trainq user …`.
pub async fn user_command(args: crate::config::UserArgs) -> anyhow::Result<()> {
    use crate::config::UserCommand;
    use crate::domain::user::{check_name, new_token};
    let data_dir = crate::config::absolute_dir(&args.data_dir)?;
    let store = Store::open(&data_dir).await.context("opening the database")?;
    match args.command {
        UserCommand::Add { name, admin, email } => {
            check_name(&name).map_err(anyhow::Error::msg)?;
            if let Some(email) = &email {
                crate::domain::notify_target::check_email(email)
                    .map_err(|message| anyhow::anyhow!("--email: {message}"))?;
            }
            let token = new_token();
            anyhow::ensure!(
                store.add_user(&name, admin, &token).await?,
                "user `{name}` exists; `trainq user token {name}` gives them a new token"
            );
            if let Some(email) = email {
                let change = crate::store::NotifyTargetsChange { email: Some(Some(email)), webhook: None };
                store.set_notify_targets(&name, &change).await?;
            }
            eprintln!(
                "created {} `{name}`; their token (shown once, only its hash is kept):",
                if admin { "admin" } else { "user" }
            );
            println!("{token}");
        }
        UserCommand::Token { name } => {
            let token = new_token();
            anyhow::ensure!(
                store.set_token(&name, &token).await?,
                "no user `{name}`; `trainq user add {name}` creates one"
            );
            eprintln!("new token for `{name}` (the old one no longer works):");
            println!("{token}");
        }
        UserCommand::List => {
            for record in store.users().await? {
                println!(
                    "{}\t{}\t{}",
                    record.user.name,
                    if record.user.admin { "admin" } else { "user" },
                    record.created_at
                );
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: no new jobs start; running workers save a checkpoint and exit");
}
