//! `trainq serve`: opens the store, re-queues jobs a dead server left running, starts the
//! scheduler, and serves the API until the process ends.

use crate::config::ServeConfig;
use crate::devices::Inventory;
use crate::events::EventBus;
use crate::http::{self, AppState, Limits, Paths, RateLimiter};
use crate::scheduler::{self, Inputs, SchedulerHandle};
use crate::store::Store;
use crate::supervisor::{Executor, Supervisor, SupervisorConfig};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The demo dataset's name under the datasets folder.
pub const DEMO_DATASET: &str = "chest_xray_demo";

fn absolute_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    path.canonicalize().with_context(|| format!("resolving {}", path.display()))
}

fn default_worker() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the trainq binary")?;
    Ok(exe.with_file_name("trainq-worker"))
}

/// Runs the server.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Workers run in their own folders, so every path they get must be absolute.
    let data_dir = absolute_dir(&config.data_dir)?;
    let datasets = absolute_dir(&config.datasets.clone().unwrap_or_else(|| data_dir.join("datasets")))?;
    let weights = absolute_dir(&config.weights.clone().unwrap_or_else(|| data_dir.join("weights")))?;
    let static_dir = config.static_dir.clone();
    let worker_program = match config.worker.clone() {
        Some(path) => path,
        None => default_worker()?,
    };
    if config.demo && !datasets.join(DEMO_DATASET).exists() {
        let options = crate::demo_data::DemoOptions::default();
        let target = datasets.join(DEMO_DATASET);
        let summary = tokio::task::spawn_blocking(move || crate::demo_data::write(&target, &options)).await??;
        tracing::info!(%summary, "generated the demo dataset");
    }

    if let Some(gb) = config.worker_max_memory_gb {
        // Measured: libtorch alone needs about 0.7 GB of private memory to load.
        anyhow::ensure!(
            gb >= 1.0,
            "--worker-max-memory-gb {gb} is too small: a worker needs about 1 GB just to load libtorch"
        );
    }
    // Job folders and the cache: on a filesystem compute nodes share, with Slurm.
    let work_dir = match &config.shared_dir {
        Some(dir) => absolute_dir(dir)?,
        None => data_dir.clone(),
    };
    let disk = crate::disk_space::Disk::new(
        &data_dir,
        &work_dir.join("jobs"),
        &work_dir.join("cache"),
        crate::disk_space::DiskSettings {
            low_water_bytes: (config.disk_low_water_gb.max(0.0) * 1e9) as u64,
            reserve_bytes: config.disk_reserve_mb << 20,
            max_storage_attempts: config.max_storage_retries,
        },
    );
    let store = Store::open(&data_dir).await.context("opening the database")?;
    let worker_program_path = worker_program.clone();
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
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    let slurm = (config.executor == "slurm").then(|| {
        Arc::new(crate::supervisor::slurm::SlurmConfig {
            partition: config.slurm_partition.clone(),
            account: config.slurm_account.clone(),
            time: config.slurm_time.clone(),
            gpus: config.slurm_gpus,
            cpus_per_job: config.slurm_cpus,
            public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{address}")),
            relay_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trainq")),
            poll: Duration::from_secs_f64(config.slurm_poll_secs.max(0.1)),
        })
    });
    let inventory = match &slurm {
        Some(slurm) => Inventory::slurm(config.slurm_jobs, slurm.gpus, slurm.cpus_per_job as usize),
        None => Inventory::discover(config.cpu_slots, !config.no_gpu),
    };
    let scheduler_handle = SchedulerHandle::default();
    let events = EventBus::new();
    // One set of counters for the process: the supervisor and scheduler count into it, the HTTP
    // layer counts requests, and `/metrics` reads it.
    let telemetry = crate::telemetry::Telemetry::new();
    let supervisor = Supervisor::new(
        store.clone(),
        SupervisorConfig {
            data_dir: work_dir.clone(),
            worker_program,
            executor: match &slurm {
                Some(slurm) => Executor::Slurm(slurm.clone()),
                None => Executor::Local,
            },
            kill_grace: Duration::from_secs(config.kill_grace_secs),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            cpu_memory_limit: config.worker_max_memory_gb.map(|gb| (gb.max(0.1) * 1e9) as u64),
        },
        scheduler_handle.notifier(),
        events.clone(),
        inventory.clone(),
        disk.clone(),
        telemetry.clone(),
    );
    let cache_budget_bytes = (config.cache_max_gb.max(0.0) * 1e9) as u64;
    let inputs = Inputs {
        datasets: datasets.clone(),
        weights: weights.clone(),
        data_dir: work_dir.clone(),
        cache_budget_bytes,
        disk: disk.clone(),
    };
    // Jobs Slurm kept running while no server was here: follow them again.
    for (job, slurm_id) in store.running_elsewhere().await? {
        if slurm.is_some() {
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
    let settings = scheduler::Settings {
        limits: scheduler::policy::Limits {
            max_jobs_per_gpu: config.max_jobs_per_gpu.max(1),
            headroom_bytes: (config.gpu_headroom_gb.max(0.0) * 1e9) as u64,
            max_jobs_per_user: config.max_running_per_user,
        },
        half_life_secs: config.fair_share_half_life_hours.max(0.001) * 3600.0,
    };
    tokio::spawn(scheduler::run(
        scheduler_handle.clone(),
        store.clone(),
        inventory.clone(),
        supervisor.clone(),
        inputs,
        settings,
        events.clone(),
    ));
    // Notifications of jobs' ends: the outbox the store fills, delivered in a task of its own.
    let mailer = match &config.smtp_url {
        Some(url) => Some(crate::notify::email::Mailer::new(url, &config.smtp_from, config.smtp_ca_file.as_deref())?),
        None => None,
    };
    tokio::spawn(crate::notify::run(
        store.clone(),
        events.clone(),
        crate::notify::NotifierSettings {
            mailer,
            public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{address}")),
            retry_base: Duration::from_secs_f64(config.notify_retry_secs.max(0.05)),
            max_attempts: config.notify_max_attempts.max(1),
        },
    ));

    // Users' disk usage counts every ended job: those never measured are, once, in the background.
    let retention = crate::retention::Retention::new(store.clone(), supervisor.clone(), events.clone());
    tokio::spawn(retention.clone().measure_unmeasured());
    if config.retention_days > 0 {
        // An empty keep list deletes old jobs outright (tombstones); otherwise they are pruned.
        let keep = match config.retention_keep.trim() {
            "" => None,
            list => Some(
                crate::domain::retention::KeepList::parse(&[list])
                    .map_err(|message| anyhow::anyhow!("--retention-keep: {message}"))?,
            ),
        };
        tokio::spawn(retention.retain(config.retention_days, keep));
    }
    let state = AppState {
        store,
        scheduler: scheduler_handle,
        supervisor,
        inventory,
        events: events.clone(),
        disk,
        paths: Arc::new(Paths {
            data_dir: work_dir,
            datasets,
            weights,
            static_dir,
            worker_program: worker_program_path,
        }),
        limits: Arc::new(Limits {
            rate: RateLimiter::new(config.rate_limit_per_minute.max(1)),
            max_active_jobs_per_user: config.max_jobs_per_user,
            max_epochs: config.max_epochs,
            max_image_side: config.max_image_side,
            half_life_secs: config.fair_share_half_life_hours.max(0.001) * 3600.0,
            max_disk_bytes_per_user: config.max_disk_per_user_gb.map(|gb| (gb.max(0.0) * 1e9) as u64),
        }),
        tokens: Arc::default(),
        telemetry,
    };
    // Tests and scripts read this line to find a port-0 server.
    println!("trainq listening on http://{address}");
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
    http::serve(listener, state, shutdown).await?;
    Ok(())
}

/// `trainq user …`.
pub async fn user_command(args: crate::config::UserArgs) -> anyhow::Result<()> {
    use crate::config::UserCommand;
    use crate::domain::user::{check_name, new_token};
    let data_dir = absolute_dir(&args.data_dir)?;
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
