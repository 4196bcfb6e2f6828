//! `trainq admin users …` (a roster's import, the accounts' list, disable, enable, rotate) and
//! `trainq token rotate`. The roster is read here (`domain::roster`) and sent as JSON; the server
//! checks every row and creates all of them or none.

use super::{Api, Profile};
use crate::config::AdminUsersCommand;
use crate::domain::retention::human_bytes;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Runs one `trainq admin users` subcommand.
pub async fn admin_users(api: &Api, command: AdminUsersCommand) -> anyhow::Result<()> {
    match command {
        AdminUsersCommand::Import { roster, send_tokens, tokens_file } => {
            import(api, &roster, send_tokens, tokens_file.as_deref()).await
        }
        AdminUsersCommand::Ls { json } => {
            let list = api.get("/api/admin/users").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", account_table(list["users"].as_array().map(Vec::as_slice).unwrap_or_default()));
            }
            Ok(())
        }
        AdminUsersCommand::Disable { names } => change(api, &names, json!({"disabled": true})).await,
        AdminUsersCommand::Enable { names } => change(api, &names, json!({"disabled": false})).await,
        AdminUsersCommand::Rotate { name } => {
            let answer = api.post(&format!("/api/admin/users/{name}/token"), &Value::Null).await?;
            eprintln!("new token for `{name}` (shown once; the old one no longer works):");
            println!("{}", answer["token"].as_str().unwrap_or_default());
            Ok(())
        }
    }
}

/// `PATCH /api/admin/users/{name}` with `body` for each name; prints each account's new state.
async fn change(api: &Api, names: &[String], body: Value) -> anyhow::Result<()> {
    for name in names {
        let url = format!("{}/api/admin/users/{name}", api.profile.url);
        let account = api.send(api.http.patch(url).json(&body)).await?;
        println!("{name}\t{}", account["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The accounts as a table: name, email, role, state, jobs, device-hours, disk, last request.
fn account_table(users: &[Value]) -> String {
    let now = crate::store::unix_now();
    let mut text = format!(
        "{:<20} {:<32} {:<7} {:<8} {:>5} {:>8} {:>9}  {}\n",
        "NAME", "EMAIL", "ROLE", "STATE", "JOBS", "GPU-H", "DISK", "LAST REQUEST"
    );
    for user in users {
        let last = user["last_request_at"].as_f64().map_or(String::from("never"), |at| {
            let minutes = ((now - at) / 60.0).max(0.0);
            match minutes {
                m if m < 2.0 => String::from("just now"),
                m if m < 120.0 => format!("{m:.0} min ago"),
                m if m < 2880.0 => format!("{:.0} h ago", m / 60.0),
                m => format!("{:.0} days ago", m / 1440.0),
            }
        });
        text.push_str(&format!(
            "{:<20} {:<32} {:<7} {:<8} {:>5} {:>8.1} {:>9}  {last}\n",
            user["name"].as_str().unwrap_or("?"),
            user["email"].as_str().unwrap_or("-"),
            user["role"].as_str().unwrap_or("?"),
            user["state"].as_str().unwrap_or("?"),
            user["jobs"].as_i64().unwrap_or(0),
            user["device_hours"].as_f64().unwrap_or(0.0),
            human_bytes(user["disk_bytes"].as_u64().unwrap_or(0)),
        ));
    }
    text
}

/// `trainq admin users import ROSTER [--send-tokens] [--tokens-file FILE]`.
async fn import(api: &Api, roster: &Path, send_tokens: bool, tokens_file: Option<&Path>) -> anyhow::Result<()> {
    let bytes = std::fs::read(roster).with_context(|| format!("reading the roster {}", roster.display()))?;
    let rows = crate::domain::roster::parse(&bytes).with_context(|| format!("{} is not a roster", roster.display()))?;
    if rows.is_empty() {
        bail!("{} has no rows below its header; nothing to import", roster.display());
    }
    let path = format!("/api/admin/users?send_tokens={send_tokens}");
    let report = api.post(&path, &serde_json::to_value(&rows)?).await.with_context(|| {
        format!(
            "importing {} (nothing was created; fix the line named and import the same file again)",
            roster.display()
        )
    })?;
    println!("{}", report["message"].as_str().unwrap_or_default());
    let tokens: Vec<&Value> =
        report["created"].as_array().into_iter().flatten().filter(|account| account["token"].is_string()).collect();
    if tokens.is_empty() {
        return Ok(());
    }
    let target = match tokens_file {
        Some(path) => path.to_path_buf(),
        None => default_tokens_file(roster),
    };
    write_tokens(&target, &tokens, &api.profile.url)?;
    println!(
        "wrote {} tokens to {} (mode 0600; shown only this once): give each student their line, then delete the file",
        tokens.len(),
        target.display()
    );
    Ok(())
}

/// `<roster>-tokens-<unix time>.csv` beside the roster.
fn default_tokens_file(roster: &Path) -> PathBuf {
    let stem = roster.file_stem().map_or_else(|| String::from("roster"), |stem| stem.to_string_lossy().into_owned());
    let seconds = crate::store::unix_now() as u64;
    roster.with_file_name(format!("{stem}-tokens-{seconds}.csv"))
}

/// Writes `name,email,token,login` rows to a new file only its owner can read (never over an
/// existing one: those tokens would be lost).
fn write_tokens(path: &Path, accounts: &[&Value], url: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} for the tokens (it must not exist yet)", path.display()))?;
    let mut writer = csv::Writer::from_writer(file);
    writer.write_record(["name", "email", "token", "login"])?;
    for account in accounts {
        let token = account["token"].as_str().unwrap_or_default();
        writer.write_record([
            account["name"].as_str().unwrap_or_default(),
            account["email"].as_str().unwrap_or_default(),
            token,
            &format!("echo '{token}' | trainq login {url} --token-stdin"),
        ])?;
    }
    let mut file = writer.into_inner().map_err(|err| anyhow::anyhow!("writing {}: {}", path.display(), err.error()))?;
    file.flush()?;
    file.sync_all()?;
    Ok(())
}

/// `trainq token rotate`: a new token from the server, saved in the client's config; the old one
/// stops working at once.
pub async fn rotate_own_token() -> anyhow::Result<()> {
    let profile = Profile::load()?;
    let answer = Api::new(profile.clone())?.post("/api/me/token", &Value::Null).await?;
    let Some(token) = answer["token"].as_str() else { bail!("the server answered no token: {answer}") };
    let saved = Profile { token: Some(token.to_string()), ..profile.clone() };
    let path = saved.save().context("saving the new token (the old one no longer works; ask the admin for another)")?;
    println!(
        "new token for {} saved in {}; the old one no longer works",
        answer["name"].as_str().unwrap_or("?"),
        path.display()
    );
    if std::env::var_os("TRAINQ_TOKEN").is_some_and(|token| !token.is_empty()) {
        eprintln!(
            "TRAINQ_TOKEN is set and still holds the old token: unset it, or set it to the new one from {}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_written_to_a_new_file_only_its_owner_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let account = json!({"name": "alice", "email": "alice@example.org", "token": "tq_1"});
        write_tokens(&path, &[&account], "http://gpubox:8080").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "name,email,token,login\nalice,alice@example.org,tq_1,echo 'tq_1' | trainq login http://gpubox:8080 --token-stdin\n"
        );
        assert!(write_tokens(&path, &[&account], "http://gpubox:8080").is_err(), "never over an existing file");
        let default = default_tokens_file(Path::new("/tmp/class/roster.csv"));
        assert!(default.to_string_lossy().starts_with("/tmp/class/roster-tokens-"), "{}", default.display());
    }
}
