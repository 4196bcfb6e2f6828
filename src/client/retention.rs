//! `trainq rm` (delete finished jobs' files; their rows stay, marked deleted) and `trainq admin`
//! (`gc`: free the disk of old jobs; `usage`: everyone's bytes).

use super::{Api, Profile};
use crate::config::{AdminCommand, GcArgs};
use crate::domain::retention::{human_bytes, parse_age, KeepList};
use serde_json::{json, Value};

/// `trainq rm ID…`: deletes each job, one line per job; the first failure stops with the
/// server's reason (e.g. a running job: cancel it first).
pub async fn rm(ids: &[String]) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    for given in ids {
        let id = api.resolve(given).await?;
        let job = api.delete(&format!("/api/jobs/{id}")).await?;
        let freed = job["freed_bytes"].as_u64().unwrap_or(0);
        println!("{id} {} deleted ({} freed)", job["name"].as_str().unwrap_or("?"), human_bytes(freed));
    }
    Ok(())
}

/// `trainq admin …`.
pub async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    match command {
        AdminCommand::Gc(args) => gc(&api, &args).await,
        AdminCommand::Backup(args) => super::backup::backup(&api, &args).await,
        AdminCommand::Datasets(crate::config::DatasetsCommand::Import(args)) => {
            super::dataset_import::import(&api, &args).await
        }
        AdminCommand::Users(args) => super::users::admin_users(&api, args.command).await,
        AdminCommand::Budget(args) => super::budget::set_budget(&api, &args).await,
        AdminCommand::Reserve(args) => super::reservations::reserve(&api, &args).await,
        AdminCommand::Reservations => super::reservations::list(&api).await,
        AdminCommand::Unreserve { name } => super::reservations::unreserve(&api, &name).await,
        AdminCommand::Usage => {
            let usage = api.get("/api/admin/usage").await?;
            let quota = usage["quota_bytes"]
                .as_u64()
                .map_or(String::from("no quota"), |quota| format!("quota {}", human_bytes(quota)));
            println!("{quota}");
            for user in usage["users"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    user["user"].as_str().unwrap_or("?"),
                    human_bytes(user["disk_bytes"].as_u64().unwrap_or(0))
                );
            }
            Ok(())
        }
    }
}

/// `trainq admin gc --older-than AGE [--keep LIST] [--dry-run]`, checked here before the request.
async fn gc(api: &Api, args: &GcArgs) -> anyhow::Result<()> {
    parse_age(&args.older_than).map_err(|message| anyhow::anyhow!("--older-than: {message}"))?;
    let keep = if args.keep.is_empty() {
        None
    } else {
        Some(KeepList::parse(&args.keep).map_err(|message| anyhow::anyhow!("--keep: {message}"))?)
    };
    let mut body = json!({"older_than": args.older_than, "dry_run": args.dry_run});
    if let Some(keep) = &keep {
        body["keep"] = json!(keep.patterns());
    }
    let report = api.post("/api/admin/gc", &body).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let jobs = report["jobs"].as_array().cloned().unwrap_or_default();
    let verb = if args.dry_run { "would free" } else { "freed" };
    for job in &jobs {
        println!(
            "{}\t{}\t{}\t{}\t{} {}",
            job["id"].as_str().unwrap_or("?"),
            job["owner"].as_str().unwrap_or("-"),
            job["finished_at"].as_str().unwrap_or("-"),
            job["action"].as_str().unwrap_or("?"),
            verb,
            human_bytes(job["freed_bytes"].as_u64().unwrap_or(0)),
        );
    }
    let failed: Vec<&str> = report["failed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!(
        "{} jobs ended before {}: {verb} {}{}",
        jobs.len(),
        report["cutoff"].as_str().unwrap_or("?"),
        human_bytes(report["freed_bytes"].as_u64().unwrap_or(0)),
        if args.dry_run { " (dry run: nothing was removed)" } else { "" },
    );
    if !failed.is_empty() {
        anyhow::bail!(
            "the files of {} jobs could not be removed (see the server's log): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
