//! The students' terminal: `trainq login`, `submit`, `ls`, `watch`, `pull`, `report`, … A client
//! of the REST API like curl, with the token kept in `~/.config/trainq/config.toml` (mode 0600)
//! instead of typed into every command. `TRAINQ_URL` and `TRAINQ_TOKEN` override the file.
//! It links no libtorch: it shares the spec's parsing with the server (`domain`), so a bad
//! `--set` is refused before any request.

mod backup;
mod budget;
mod dataset_import;
mod notify;
mod pull;
mod reservations;
mod retention;
mod submit;
mod table;
mod users;
mod watch;

pub use budget::me;
pub use notify::{notify, NotifyChange};
pub use pull::pull;
pub use retention::{admin, rm};
pub use submit::{redo, submit, SubmitOptions};
pub use users::rotate_own_token;
pub use watch::watch;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// What every command needs to reach the server.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// The server's base URL, e.g. `http://gpubox:8080`.
    pub url: String,
    /// The user's API token.
    pub token: Option<String>,
    /// A PEM file of the CA that signed the server's certificate (`trainq login --ca-file`),
    /// trusted besides the usual ones; `TRAINQ_CA_FILE` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/trainq/config.toml`, else `~/.config/trainq/config.toml`.
pub fn config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set TRAINQ_URL and TRAINQ_TOKEN"))?,
        )
        .join(".config"),
    };
    Ok(base.join("trainq").join("config.toml"))
}

/// How to get a token, said by every command that has none.
const NO_TOKEN: &str = "no token: ask the admin for yours (`trainq user add NAME` on the server prints it), then \
                        run `trainq login URL` (or set TRAINQ_URL and TRAINQ_TOKEN)";

impl Profile {
    /// The saved profile with the environment's overrides; an error saying how to log in when
    /// there is no server URL at all.
    pub fn load() -> anyhow::Result<Profile> {
        let saved: Option<Profile> = match std::fs::read_to_string(config_path()?) {
            Ok(text) => Some(toml::from_str(&text).context("reading the saved login (run `trainq login URL` again)")?),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).context("reading the saved login"),
        };
        let url = std::env::var("TRAINQ_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .or_else(|| saved.as_ref().map(|saved| saved.url.clone()));
        let ca_file = std::env::var_os("TRAINQ_CA_FILE")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .or_else(|| saved.as_ref().and_then(|saved| saved.ca_file.clone()));
        let token = std::env::var("TRAINQ_TOKEN")
            .ok()
            .filter(|token| !token.is_empty())
            .or_else(|| saved.and_then(|saved| saved.token));
        match url {
            Some(url) => Ok(Profile { url: url.trim_end_matches('/').to_string(), token, ca_file }),
            None => bail!("no server: run `trainq login URL` (or set TRAINQ_URL and TRAINQ_TOKEN)"),
        }
    }

    /// Writes the profile where [`Profile::load`] finds it, readable by the user alone.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = config_path()?;
        std::fs::create_dir_all(path.parent().expect("the path has a folder"))?;
        let text = toml::to_string(self)?;
        let temporary = path.with_extension("toml.tmp");
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        Ok(path)
    }
}

/// A failed request, worded from the server's JSON error: status, field and message.
fn api_error(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let detail = &body["detail"];
    let message = detail["message"].as_str().or(body["error"].as_str()).unwrap_or("no detail");
    match detail["field"].as_str() {
        Some(field) => anyhow!("{status}: `{field}`: {message}"),
        None => anyhow!("{status}: {message}"),
    }
}

/// The API, as one user.
pub struct Api {
    profile: Profile,
    http: reqwest::Client,
    /// For answers that stream for as long as a job runs (events, a followed log, downloads):
    /// no limit on the whole answer, only on silence (the event stream sends a keep-alive
    /// every 15 s).
    streaming: reqwest::Client,
}

impl Api {
    /// A client for `profile`; commands that need a token fail with how to get one.
    pub fn new(profile: Profile) -> anyhow::Result<Api> {
        if profile.token.is_none() {
            bail!("{NO_TOKEN}");
        }
        if crate::tls::is_clear_text_over_network(&profile.url) {
            eprintln!(
                "warning: {} is plain http:// to another machine: your token travels in clear; ask the admin for \
                 the https:// URL",
                profile.url
            );
        }
        let trusting = |builder: reqwest::ClientBuilder| match &profile.ca_file {
            Some(ca_file) => crate::tls::trust_ca_file(builder, ca_file),
            None => Ok(builder),
        };
        let http = trusting(reqwest::Client::builder().timeout(Duration::from_secs(60)))?.build()?;
        let streaming = trusting(
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).read_timeout(Duration::from_secs(60)),
        )?
        .build()?;
        Ok(Api { profile, http, streaming })
    }

    /// Sends `request` with the token; any answer but a success becomes the server's worded error.
    async fn respond(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = request.bearer_auth(self.profile.token.as_deref().unwrap_or_default());
        let response =
            request.send().await.map_err(|err| match crate::tls::explain_tls_failure(&err, &self.profile.url) {
                Some(reason) => anyhow!("reaching {}: {reason}", self.profile.url),
                None => anyhow::Error::from(err).context(format!("reaching {}", self.profile.url)),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(api_error(status, &body).context(NO_TOKEN));
        }
        Err(api_error(status, &body))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.respond(request).await?.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` as a response to read as it arrives (a followed log, a download, events),
    /// with `headers` such as `Range` or `Last-Event-ID`.
    pub async fn open(&self, path: &str, headers: &[(&str, String)]) -> anyhow::Result<reqwest::Response> {
        let mut request = self.streaming.get(format!("{}{path}", self.profile.url));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.respond(request).await
    }

    /// `GET path` (with its query) as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.profile.url))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.profile.url)).json(body)).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.patch(format!("{}{path}", self.profile.url)).json(body)).await
    }

    /// `DELETE path`, its answer as JSON.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.profile.url))).await
    }

    /// Every row of `GET /api/jobs?{query}`, page after page.
    pub async fn all_jobs(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        self.jobs(query, usize::MAX).await
    }

    /// The first `most` rows of `GET /api/jobs?{query}` (newest first), page after page.
    pub async fn jobs(&self, query: &str, most: usize) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/jobs?limit={}&{query}", most.saturating_sub(rows.len()).clamp(1, 500));
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.get(&path).await?;
            rows.extend(page["jobs"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) if rows.len() < most => cursor = Some(next.to_string()),
                _ => return Ok(rows),
            }
        }
    }

    /// The full id of the job `given` names: a whole id (a group's too), or a prefix of exactly
    /// one job's id (the caller's jobs are searched first, like git's short hashes).
    pub async fn resolve(&self, given: &str) -> anyhow::Result<String> {
        match self.resolve_named(given, false).await? {
            Named::Job(id) | Named::Group(id) => Ok(id),
        }
    }

    /// The job or group `given` names: a whole id, or a prefix of exactly one job's id or one
    /// group's id (`compare`, `report` and `wait` take either, as `submit --sweep` prints both).
    pub async fn resolve_job_or_group(&self, given: &str) -> anyhow::Result<Named> {
        self.resolve_named(given, true).await
    }

    /// The one search behind [`Api::resolve`] and [`Api::resolve_job_or_group`]: the caller's
    /// jobs first, then everyone's, matching job ids and (when `groups`) group ids.
    async fn resolve_named(&self, given: &str, groups: bool) -> anyhow::Result<Named> {
        if given.parse::<uuid::Uuid>().is_ok() {
            return Ok(Named::Job(given.to_string()));
        }
        let what = if groups { "job or group id" } else { "job id" };
        if given.len() < 4 || !given.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("`{given}` is not a {what} or a prefix of one (at least 4 hex digits)");
        }
        for query in ["owner=me", ""] {
            let mut matches: Vec<Named> = Vec::new();
            for job in self.all_jobs(query).await? {
                if let Some(id) = job["id"].as_str().filter(|id| id.starts_with(given)) {
                    matches.push(Named::Job(id.to_string()));
                }
                if let Some(group) = job["group_id"].as_str().filter(|id| groups && id.starts_with(given)) {
                    let group = Named::Group(group.to_string());
                    if !matches.contains(&group) {
                        matches.push(group);
                    }
                }
            }
            match matches.as_slice() {
                [] => continue,
                [one] => return Ok(one.clone()),
                several => bail!(
                    "`{given}` matches {} ids ({}, {}…); give more of the id",
                    several.len(),
                    several[0],
                    several[1]
                ),
            }
        }
        bail!("no {what} starts with `{given}`")
    }
}

/// What an id on the command line names, once resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Named {
    /// A job's full id.
    Job(String),
    /// A group's full id (`repeats`, `sweep`).
    Group(String),
}

impl std::fmt::Display for Named {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Job(id) => write!(formatter, "job {id}"),
            Named::Group(id) => write!(formatter, "group {id}"),
        }
    }
}

/// `trainq login URL`: checks the token against the server (`GET /api/me`), then saves both, and
/// the CA file `ca_file` (made absolute, so any folder finds it) when given.
pub async fn login(url: &str, token_stdin: bool, ca_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let url = url.trim_end_matches('/').to_string();
    let stdin = std::io::stdin();
    if !token_stdin && stdin.is_terminal() {
        eprint!("token for {url}: ");
        std::io::stderr().flush()?;
    }
    let mut token = String::new();
    stdin.lock().read_line(&mut token)?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("{NO_TOKEN}");
    }
    let given = ca_file
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("TRAINQ_CA_FILE").filter(|path| !path.is_empty()).map(PathBuf::from));
    let ca_file = match given {
        Some(path) => Some(std::fs::canonicalize(&path).with_context(|| format!("the CA file {}", path.display()))?),
        None => None,
    };
    let profile = Profile { url: url.clone(), token: Some(token), ca_file };
    let me =
        Api::new(profile.clone())?.get("/api/me").await.with_context(|| format!("checking the token with {url}"))?;
    let path = profile.save()?;
    println!("logged in to {url} as {}; saved in {}", me["name"].as_str().unwrap_or("?"), path.display());
    Ok(())
}

/// `trainq ls`: the caller's newest `limit` jobs (`--all`: everyone's; a limit of 0: all of them).
pub async fn ls(all: bool, state: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let mut query = if all { String::new() } else { String::from("owner=me") };
    if let Some(state) = state {
        query.push_str(&format!("&state={state}"));
    }
    let rows = api.jobs(&query, if limit == 0 { usize::MAX } else { limit }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", table::jobs(&rows));
    if rows.len() == limit {
        eprintln!("(the newest {limit}; `--limit N` for more, `--limit 0` for all)");
    }
    Ok(())
}

/// `trainq show ID`: one job as the server has it.
pub async fn show(id: &str) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let id = api.resolve(id).await?;
    let job = api.get(&format!("/api/jobs/{id}")).await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(())
}

/// `trainq cancel ID…`.
pub async fn cancel(ids: &[String]) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    for given in ids {
        let id = api.resolve(given).await?;
        let job = api.post(&format!("/api/jobs/{id}/cancel"), &Value::Null).await?;
        println!("{id} {}", job["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// `trainq logs [-f] ID`: the job's log; `-f` follows it until the job ends.
pub async fn logs(id: &str, follow: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let api = Api::new(Profile::load()?)?;
    let id = api.resolve(id).await?;
    let query = if follow { "?follow=true" } else { "" };
    let mut body = api.open(&format!("/api/jobs/{id}/log{query}"), &[]).await?.bytes_stream();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Job ids and group ids (or prefixes of either), as the server's `ids=` wants them.
async fn id_list(api: &Api, given: &[String]) -> anyhow::Result<String> {
    let mut ids = Vec::with_capacity(given.len());
    for given in given {
        match api.resolve_job_or_group(given).await? {
            Named::Job(id) | Named::Group(id) => ids.push(id),
        }
    }
    Ok(ids.join(","))
}

/// `trainq compare ID… [--csv|--json]`: test metrics side by side; a group is one row per
/// combination, mean ± std over its repeats.
pub async fn compare(ids: &[String], csv: bool, json: bool) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let ids = id_list(&api, ids).await?;
    if csv {
        let text = api.open(&format!("/api/compare?ids={ids}&format=csv"), &[]).await?.text().await?;
        print!("{text}");
        return Ok(());
    }
    let comparison = api.get(&format!("/api/compare?ids={ids}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", table::compare(comparison["rows"].as_array().map(Vec::as_slice).unwrap_or_default()));
    }
    Ok(())
}

/// `trainq report ID…|GROUP > hw3.html`: the self-contained HTML report of these experiments.
pub async fn report(ids: &[String]) -> anyhow::Result<()> {
    let api = Api::new(Profile::load()?)?;
    let ids = id_list(&api, ids).await?;
    let html = api.open(&format!("/api/report?ids={ids}"), &[]).await?.bytes().await?;
    if std::io::stdout().is_terminal() {
        eprintln!("(the report is HTML: `trainq report … > hw3.html`, then open it in a browser or print it to PDF)");
    }
    std::io::stdout().write_all(&html)?;
    Ok(())
}

/// What `trainq wait` exits with when every job has ended: 0 when all succeeded, 1 when any
/// failed, else 3 when any reached its time limit (it can be resumed with more time), else 2
/// when any was cancelled.
pub fn wait_code(states: &[&str]) -> i32 {
    if states.contains(&"failed") {
        1
    } else if states.contains(&"timeout") {
        3
    } else if states.contains(&"cancelled") {
        2
    } else {
        0
    }
}

/// `trainq wait ID…|GROUP…`: polls until every job (a group: each of its jobs) has ended; returns
/// the exit code ([`wait_code`]).
pub async fn wait(ids: &[String], poll: Duration) -> anyhow::Result<i32> {
    let api = Api::new(Profile::load()?)?;
    let mut resolved = Vec::with_capacity(ids.len());
    for given in ids {
        resolved.extend(group_members(&api, api.resolve_job_or_group(given).await?).await?);
    }
    let mut ended: Vec<Option<String>> = vec![None; resolved.len()];
    loop {
        for (id, end) in resolved.iter().zip(ended.iter_mut()).filter(|(_, end)| end.is_none()) {
            let job = api.get(&format!("/api/jobs/{id}")).await?;
            let state = job["state"].as_str().unwrap_or_default();
            if state.parse::<crate::domain::JobState>().is_ok_and(crate::domain::JobState::is_terminal) {
                println!("{id} {state}");
                *end = Some(state.to_string());
            }
        }
        if ended.iter().all(Option::is_some) {
            let states: Vec<&str> = ended.iter().flatten().map(String::as_str).collect();
            return Ok(wait_code(&states));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The jobs a resolved id stands for: a job itself, or each job of a group. A whole id is looked
/// up as a job first, then as a group, since its shape does not tell which it is.
async fn group_members(api: &Api, named: Named) -> anyhow::Result<Vec<String>> {
    let group = match named {
        Named::Group(group) => group,
        Named::Job(id) => match api.get(&format!("/api/jobs/{id}")).await {
            Ok(_) => return Ok(vec![id]),
            Err(not_a_job) => match api.get(&format!("/api/groups/{id}")).await {
                Ok(_) => id,
                Err(_) => return Err(not_a_job),
            },
        },
    };
    let view = api.get(&format!("/api/groups/{group}")).await?;
    Ok(view["jobs"].as_array().into_iter().flatten().filter_map(|job| job["id"].as_str()).map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_codes_put_a_failure_before_a_cancel() {
        assert_eq!(wait_code(&["succeeded", "succeeded"]), 0);
        assert_eq!(wait_code(&["succeeded", "cancelled"]), 2);
        assert_eq!(wait_code(&["cancelled", "failed"]), 1);
        assert_eq!(wait_code(&["timeout", "cancelled", "succeeded"]), 3, "a time limit before a cancel");
        assert_eq!(wait_code(&["timeout", "failed"]), 1, "a failure before a time limit");
    }

    #[test]
    fn server_errors_name_the_field() {
        let body = serde_json::json!({"error": "invalid spec", "detail": {"field": "image_size", "message": "must be 32..1024"}});
        let message = api_error(reqwest::StatusCode::UNPROCESSABLE_ENTITY, &body).to_string();
        assert_eq!(message, "422 Unprocessable Entity: `image_size`: must be 32..1024");
    }
}
