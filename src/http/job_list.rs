//! `GET /api/jobs`: the job list, a page at a time, in compact rows (no spec); and the same pages
//! for the `snapshot` of `/api/events`.
//!
//! `?limit=` (1–500, default 50), `cursor=` (a page's `next_cursor`), `state=queued,running`,
//! `owner=me` or `owner=<name>`, `order=desc` (newest first, the default) or `asc`, `deleted=true`
//! (also the tombstones of deleted jobs, hidden by default). The answer is
//! `{"jobs": [rows], "next_cursor": "…" | null}` with an RFC 8288 `Link: <…>; rel="next"` while
//! there is more, and an `ETag` (`304` when unchanged). Pages are keyed by `seq` (the cursor is
//! the last row's), so jobs submitted while a client pages through never shift or repeat a row of
//! the pages still to come; and each page is one indexed read of about `limit` rows, however many
//! jobs the queue has seen.

use super::auth::Caller;
use super::extract::Query;
use super::job_view::{redact_for, standing, Standing};
use super::{etag, ApiError, AppState};
use crate::domain::worker_protocol::FinalMetrics;
use crate::domain::{Job, JobId, JobProgress, JobState, Timestamp};
use crate::store::{JobFilter, PageOrder};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use serde::Serialize;

/// Rows per page when the client does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most rows one page may hold.
pub const MAX_LIMIT: u32 = 500;

/// The query of `GET /api/jobs` (and of `GET /api/events`, for its snapshot), as sent. Read from
/// the raw pairs (`ListQuery::from_pairs`) so that even a repeated parameter is answered with the
/// API's JSON error naming it; other parameters are ignored.
#[derive(Debug, Default)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    state: Option<String>,
    owner: Option<String>,
    order: Option<String>,
    deleted: Option<String>,
}

/// A checked list query: which jobs, in which order, from where, how many.
#[derive(Debug, Clone)]
pub(super) struct ListRequest {
    filter: JobFilter,
    order: PageOrder,
    after: Option<i64>,
    limit: u32,
    /// `owner` as the client wrote it: `me` stays `me` in the next page's link.
    owner_param: Option<String>,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field, message: message.into() }
}

/// A page's cursor: the `seq` of its last row, behind a letter so that clients treat it as a
/// token to hand back rather than a number to compute with.
fn cursor_of(seq: i64) -> String {
    format!("s{seq}")
}

fn parse_cursor(raw: &str) -> Result<i64, ApiError> {
    raw.strip_prefix('s').and_then(|digits| digits.parse::<i64>().ok()).filter(|seq| *seq > 0).ok_or_else(|| {
        let fix = "send `next_cursor` of the previous page as it was, or no cursor for the first page";
        bad("cursor", format!("`{raw}` is not a cursor of this list: {fix}"))
    })
}

fn parse_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = raw else { return Ok(DEFAULT_LIMIT) };
    match raw.parse::<u32>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        Ok(0) => Err(bad("limit", format!("a page holds at least 1 job; send a limit from 1 to {MAX_LIMIT}"))),
        Ok(limit) => Err(bad(
            "limit",
            format!("{limit} is over the maximum of {MAX_LIMIT} jobs a page; send at most {MAX_LIMIT} and follow `next_cursor` for the rest"),
        )),
        Err(_) => Err(bad("limit", format!("`{raw}` is not a number; send a limit from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"))),
    }
}

fn parse_states(raw: &str) -> Result<Vec<JobState>, ApiError> {
    let mut states = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let state = name
            .parse::<JobState>()
            .map_err(|message| bad("state", format!("{message} (a comma-separated list, e.g. `queued,running`)")))?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// `me` is the caller (who must have sent a token); any other value is a user name.
fn parse_owner(raw: &str, caller: &Caller) -> Result<String, ApiError> {
    if raw == "me" {
        return match caller.user() {
            Some(user) => Ok(user.name.clone()),
            None => Err(ApiError::Unauthorized(String::from(
                "`owner=me` lists your own jobs, so it needs your token: send `Authorization: Bearer <token>`, or name the owner",
            ))),
        };
    }
    crate::domain::user::check_name(raw)
        .map_err(|message| bad("owner", format!("{message}; or `me` for your own jobs")))?;
    Ok(raw.to_string())
}

/// `deleted=true` lists deleted jobs too.
fn parse_deleted(raw: Option<&str>) -> Result<bool, ApiError> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(bad(
            "deleted",
            format!("`{other}` is not a choice; send `true` to list deleted jobs too, or leave it out"),
        )),
    }
}

fn parse_order(raw: Option<&str>) -> Result<PageOrder, ApiError> {
    match raw {
        None | Some("desc") => Ok(PageOrder::NewestFirst),
        Some("asc") => Ok(PageOrder::OldestFirst),
        Some(other) => Err(bad(
            "order",
            format!("`{other}` is not an order; send `desc` (newest first, the default) or `asc` (oldest first)"),
        )),
    }
}

impl ListQuery {
    /// The list's parameters out of a query string's pairs; one given twice is a 400 naming it.
    pub(super) fn from_pairs(pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
        let mut query = ListQuery::default();
        for (key, value) in pairs {
            let (field, slot) = match key.as_str() {
                "limit" => ("limit", &mut query.limit),
                "cursor" => ("cursor", &mut query.cursor),
                "state" => ("state", &mut query.state),
                "owner" => ("owner", &mut query.owner),
                "order" => ("order", &mut query.order),
                "deleted" => ("deleted", &mut query.deleted),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(bad(
                    field,
                    format!("`{field}` is given twice; send it once (several states go in one, comma-separated)"),
                ));
            }
        }
        Ok(query)
    }

    /// Checks every parameter; a bad one is a 400 naming it and saying what to send.
    pub(super) fn parse(&self, caller: &Caller) -> Result<ListRequest, ApiError> {
        let states = self.state.as_deref().map(parse_states).transpose()?.unwrap_or_default();
        let owner = self.owner.as_deref().map(|raw| parse_owner(raw, caller)).transpose()?;
        Ok(ListRequest {
            filter: JobFilter { states, owner, include_deleted: parse_deleted(self.deleted.as_deref())? },
            order: parse_order(self.order.as_deref())?,
            after: self.cursor.as_deref().map(parse_cursor).transpose()?,
            limit: parse_limit(self.limit.as_deref())?,
            owner_param: self.owner.clone(),
        })
    }
}

impl ListRequest {
    /// The query string of the page after this one, which starts after `cursor`.
    fn next_query(&self, cursor: &str) -> String {
        let mut parts = vec![format!("limit={}", self.limit)];
        if !self.filter.states.is_empty() {
            let names: Vec<&str> = self.filter.states.iter().map(|state| state.as_str()).collect();
            parts.push(format!("state={}", names.join(",")));
        }
        if let Some(owner) = &self.owner_param {
            parts.push(format!("owner={owner}"));
        }
        if self.order == PageOrder::OldestFirst {
            parts.push(String::from("order=asc"));
        }
        if self.filter.include_deleted {
            parts.push(String::from("deleted=true"));
        }
        parts.push(format!("cursor={cursor}"));
        parts.join("&")
    }
}

/// A job's progress in a row: where it is, not how its data loaded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProgressSummary {
    phase: u32,
    phases: u32,
    epoch: u32,
    epochs: u32,
    step: u32,
    steps: u32,
    images_per_sec: Option<f64>,
    activity: String,
    /// Of the whole job, 0 to 1 (`Job::fraction_done`).
    fraction: Option<f64>,
}

/// The test-set numbers a row shows; the rest is in `GET /api/jobs/{id}/metrics`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TestMetrics {
    test_acc: f64,
    test_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recall: Option<f64>,
}

impl From<&FinalMetrics> for TestMetrics {
    fn from(metrics: &FinalMetrics) -> TestMetrics {
        let binary = metrics.binary.as_ref();
        TestMetrics {
            test_acc: metrics.test_acc,
            test_loss: metrics.test_loss,
            auc: binary.and_then(|binary| binary.auc),
            f1: binary.and_then(|binary| binary.f1),
            precision: binary.and_then(|binary| binary.precision),
            recall: binary.and_then(|binary| binary.recall),
        }
    }
}

/// A job as a row of the list: what the queue table shows, without the spec.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct JobRow {
    id: JobId,
    /// Submission order; what the list is sorted and paged by.
    seq: i64,
    name: String,
    owner: Option<String>,
    state: JobState,
    device: Option<String>,
    #[serde(with = "crate::domain::timestamp::rfc3339")]
    #[schema(value_type = String)]
    submitted_at: Timestamp,
    #[serde(with = "crate::domain::timestamp::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    started_at: Option<Timestamp>,
    #[serde(with = "crate::domain::timestamp::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    finished_at: Option<Timestamp>,
    cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    progress: Option<ProgressSummary>,
    /// Epochs of each phase and the batch size: what turns a live `progress` event into a
    /// fraction done and a time left without the spec.
    epochs_per_phase: Vec<u32>,
    batch_size: u32,
    #[serde(flatten)]
    standing: Standing,
    /// Why it failed; for others than its owner and admins only that there is a reason.
    error: Option<String>,
    /// Its owner's and admins' only, like the final metrics of `GET /api/jobs/{id}`.
    test_metrics: Option<TestMetrics>,
    /// Bytes of its folder as last measured (when it ended).
    disk_bytes: u64,
    /// When its files were deleted (Unix seconds); only with `deleted=true`.
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::domain::timestamp::unix_seconds::option")]
    #[schema(value_type = Option<f64>)]
    deleted_at: Option<Timestamp>,
}

async fn row(state: &AppState, caller: &Caller, mut job: Job) -> Result<JobRow, ApiError> {
    redact_for(caller, &mut job);
    let standing = standing(state, &job).await?;
    let fraction = job.fraction_done();
    let progress = job.progress.map(|progress: JobProgress| ProgressSummary {
        phase: progress.phase,
        phases: progress.phases,
        epoch: progress.epoch,
        epochs: progress.epochs,
        step: progress.step,
        steps: progress.steps,
        images_per_sec: progress.images_per_sec,
        activity: progress.activity,
        fraction,
    });
    Ok(JobRow {
        id: job.id,
        seq: job.seq,
        name: job.name,
        owner: job.owner,
        state: job.state,
        device: job.device,
        submitted_at: job.submitted_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        cancel_requested: job.cancel_requested,
        group_id: job.group_id,
        progress,
        epochs_per_phase: job.spec.phases.iter().map(|phase| phase.epochs).collect(),
        batch_size: job.spec.batch_size,
        standing,
        error: job.error,
        test_metrics: job.final_metrics.as_ref().map(TestMetrics::from),
        disk_bytes: job.disk_bytes,
        deleted_at: job.deleted_at,
    })
}

/// One page of the list, as its body says it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Page {
    jobs: Vec<JobRow>,
    /// What to send as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// The page `request` asks for, as `caller` may see it.
pub(super) async fn page(state: &AppState, caller: &Caller, request: &ListRequest) -> Result<Page, ApiError> {
    let page = state.store.job_page(&request.filter, request.order, request.after, request.limit).await?;
    let mut jobs = Vec::with_capacity(page.jobs.len());
    for job in page.jobs {
        jobs.push(row(state, caller, job).await?);
    }
    Ok(Page { jobs, next_cursor: page.next_after.map(cursor_of) })
}

/// The first pages a queue snapshot carries, by name. By default what the dashboard opens with:
/// the active queue in queue order (`active`) and, for a signed-in caller, their newest jobs
/// (`mine`); `limit` sets their size. A query that names a list (`state`, `owner`, `order`) gets
/// that list's first page alone (`list`). A snapshot is always a first page: no `cursor`.
pub(super) fn snapshot_lists(query: &ListQuery, caller: &Caller) -> Result<Vec<(&'static str, ListRequest)>, ApiError> {
    if query.cursor.is_some() {
        return Err(bad("cursor", "a snapshot holds first pages; page on with `GET /api/jobs?cursor=…`"));
    }
    if query.state.is_some() || query.owner.is_some() || query.order.is_some() || query.deleted.is_some() {
        return Ok(vec![("list", query.parse(caller)?)]);
    }
    let limit = parse_limit(query.limit.as_deref())?;
    let active = ListRequest {
        filter: JobFilter { states: vec![JobState::Queued, JobState::Running], owner: None, include_deleted: false },
        order: PageOrder::OldestFirst,
        after: None,
        limit,
        owner_param: None,
    };
    let mut lists = vec![("active", active)];
    if let Some(user) = caller.user() {
        let filter = JobFilter { states: Vec::new(), owner: Some(user.name.clone()), include_deleted: false };
        let mine = ListRequest {
            filter,
            order: PageOrder::NewestFirst,
            after: None,
            limit,
            owner_param: Some(String::from("me")),
        };
        lists.push(("mine", mine));
    }
    Ok(lists)
}

/// `GET /api/jobs`: a page of compact rows, its `next_cursor` and `Link`, with an `ETag`.
#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "rows per page (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^s[1-9][0-9]{0,17}$", description = "the previous page's `next_cursor`"),
        ("state" = Option<String>, Query, pattern = r"^(queued|running|succeeded|failed|cancelled|timeout)(,(queued|running|succeeded|failed|cancelled|timeout))*$", description = "comma-separated states"),
        ("owner" = Option<String>, Query, pattern = r"^(me|[a-z0-9][a-z0-9._-]{0,31})$", description = "`me` (needs a token) or a user name"),
        ("order" = Option<String>, Query, pattern = r"^(asc|desc)$", description = "`asc` for oldest first (default `desc`, newest first)"),
        ("deleted" = Option<String>, Query, pattern = r"^(true|false)$", description = "`true` lists deleted jobs (tombstones) too"),
        ("If-None-Match" = Option<String>, Header, description = "an earlier answer's ETag"),
    ),
    responses(
        (status = 200, description = "one page of compact rows", body = Page,
            headers(("ETag" = String, description = "hash of the answer"), ("Link" = String, description = "`rel=\"next\"` while there is more"))),
        (status = 304, description = "unchanged since the ETag sent"),
    ),
    security((), ("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let request = ListQuery::from_pairs(pairs)?.parse(&caller)?;
    let page = page(&state, &caller, &request).await?;
    let mut response = etag::json(&headers, &page)?;
    if let Some(cursor) = &page.next_cursor {
        // Every part of the query is checked (state names, user names, digits): nothing to escape.
        let link = format!("</api/jobs?{}>; rel=\"next\"", request.next_query(cursor));
        response.headers_mut().insert(header::LINK, HeaderValue::from_str(&link).map_err(anyhow::Error::from)?);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::User;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let text = pairs.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("&");
        let uri: axum::http::Uri = format!("/api/jobs?{text}").parse().unwrap();
        ListQuery::from_pairs(axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).unwrap().0).unwrap()
    }

    fn field_of(err: ApiError) -> &'static str {
        match err {
            ApiError::BadRequest { field, .. } => field,
            ApiError::Unauthorized(_) => "Authorization",
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let alice = Caller::User(User { name: String::from("alice"), admin: false });
        let cases = [
            ("limit", "0", "limit"),
            ("limit", "501", "limit"),
            ("limit", "ten", "limit"),
            ("limit", "-1", "limit"),
            ("cursor", "123", "cursor"),
            ("cursor", "s", "cursor"),
            ("cursor", "s-4", "cursor"),
            ("cursor", "sx", "cursor"),
            ("state", "done", "state"),
            ("state", "queued,", "state"),
            ("state", "", "state"),
            ("owner", "", "owner"),
            ("owner", "Alice", "owner"),
            ("order", "newest", "order"),
        ];
        for (key, value, field) in cases {
            let err = query(&[(key, value)]).parse(&alice).expect_err(&format!("{key}={value}"));
            assert_eq!(field_of(err), field, "{key}={value}");
        }
        let err = query(&[("owner", "me")]).parse(&Caller::Anonymous).unwrap_err();
        assert_eq!(field_of(err), "Authorization");
        let repeated =
            vec![(String::from("state"), String::from("queued")), (String::from("state"), String::from("running"))];
        assert_eq!(field_of(ListQuery::from_pairs(repeated).unwrap_err()), "state");
    }

    #[test]
    fn a_good_query_becomes_a_filter_and_its_next_link_keeps_it() {
        let alice = Caller::User(User { name: String::from("alice"), admin: false });
        let request = query(&[
            ("limit", "500"),
            ("state", "running,queued,running"),
            ("owner", "me"),
            ("order", "asc"),
            ("cursor", "s42"),
        ])
        .parse(&alice)
        .unwrap();
        assert_eq!(
            request.filter,
            JobFilter {
                states: vec![JobState::Running, JobState::Queued],
                owner: Some(String::from("alice")),
                include_deleted: false
            }
        );
        assert_eq!((request.order, request.after, request.limit), (PageOrder::OldestFirst, Some(42), 500));
        assert_eq!(request.next_query("s7"), "limit=500&state=running,queued&owner=me&order=asc&cursor=s7");
        let plain = query(&[]).parse(&Caller::Anonymous).unwrap();
        assert_eq!(
            (plain.filter, plain.order, plain.after, plain.limit),
            (JobFilter::default(), PageOrder::NewestFirst, None, DEFAULT_LIMIT)
        );
        assert_eq!(parse_cursor(&cursor_of(9)).unwrap(), 9);
    }

    #[test]
    fn a_snapshot_is_the_dashboards_first_pages_or_the_list_asked_for() {
        let alice = Caller::User(User { name: String::from("alice"), admin: false });
        let names =
            |lists: Vec<(&'static str, ListRequest)>| lists.into_iter().map(|(name, _)| name).collect::<Vec<_>>();
        assert_eq!(names(snapshot_lists(&query(&[]), &Caller::Anonymous).unwrap()), ["active"]);
        assert_eq!(names(snapshot_lists(&query(&[("limit", "5")]), &alice).unwrap()), ["active", "mine"]);
        assert_eq!(names(snapshot_lists(&query(&[("state", "failed")]), &alice).unwrap()), ["list"]);
        assert_eq!(field_of(snapshot_lists(&query(&[("cursor", "s3")]), &alice).unwrap_err()), "cursor");
        assert_eq!(field_of(snapshot_lists(&query(&[("limit", "900")]), &alice).unwrap_err()), "limit");
    }
}
