//! Who is calling: `Authorization: Bearer <token>` checked against the users table on every
//! request, and a per-user request budget (token bucket) answered with 429 + `Retry-After`.
//!
//! Reads of the queue (names, owners, states, progress) and of the catalog are open to everyone,
//! like `squeue`; everything that changes something or reads a job's outputs needs a token, and a
//! student's token reaches only the student's own jobs (a foreign job answers 404, as if absent).
//! The token travels in a header only, never a cookie, so no other site can ride on it (no CSRF).

use super::{ApiError, AppState};
use crate::domain::user::User;
use crate::store::TokenHolder;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The caller of this request, as the auth layer found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A valid token.
    User(User),
}

impl Caller {
    /// The user, if any.
    pub fn user(&self) -> Option<&User> {
        match self {
            Caller::Anonymous => None,
            Caller::User(user) => Some(user),
        }
    }

    /// Whether the caller may see a job's private parts (outputs, log, live log lines).
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.user().is_some_and(|user| user.may_act_on(owner))
    }
}

/// How long a token's user is remembered. A token rotated or an account changed through the API
/// is forgotten at once ([`TokenCache::forget_user`]); one changed by `trainq user token` on the
/// server's shell stops working within this.
const TOKEN_TTL: Duration = Duration::from_secs(5);

/// Most tokens remembered at once; past it the memory starts over (a class has a few hundred).
const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Known tokens' users, for [`TOKEN_TTL`]: a student polling or submitting in a burst costs one
/// database read per few seconds, not one per request. Unknown tokens are never remembered.
#[derive(Debug, Default)]
pub struct TokenCache {
    known: Mutex<HashMap<String, (TokenHolder, Instant)>>,
}

impl TokenCache {
    /// Whom `token` belongs to (disabled or not), from memory if looked up in the last
    /// [`TOKEN_TTL`]. A lookup in the database also records the account's request (at most once a
    /// minute), which the admin's list shows as its last request.
    pub async fn holder(
        &self,
        store: &crate::store::Store,
        token: &str,
    ) -> Result<Option<TokenHolder>, crate::store::StoreError> {
        let now = Instant::now();
        if let Some((holder, at)) = self.known.lock().expect("token cache poisoned").get(token) {
            if now.duration_since(*at) < TOKEN_TTL {
                return Ok(Some(holder.clone()));
            }
        }
        let holder = store.token_holder(token).await?;
        if let Some(holder) = &holder {
            // A request is not refused because its time could not be noted (a full disk, a busy
            // database): the note is a convenience for the admin.
            if let Err(err) = store.note_request(holder).await {
                tracing::debug!(error = ?err, user = %holder.user.name, "could not note the request's time");
            }
        }
        let mut known = self.known.lock().expect("token cache poisoned");
        match &holder {
            Some(holder) => {
                if known.len() >= TOKEN_CACHE_CAPACITY {
                    known.clear();
                }
                known.insert(token.to_string(), (holder.clone(), now));
            }
            None => {
                known.remove(token);
            }
        }
        Ok(holder)
    }

    /// Forgets every token of `name`'s: the next request reads the account again, so a rotated
    /// token or a disabled account answers 401 at once. Scans the memory, which only an admin's
    /// change or a rotation does.
    pub fn forget_user(&self, name: &str) {
        self.known.lock().expect("token cache poisoned").retain(|_, (holder, _)| holder.user.name != name);
    }
}

/// Why a known token is refused (401): its account is disabled, or it is older than
/// `--token-ttl-days`. The message starts with the reason, then says what to do.
fn refusal(holder: &TokenHolder, token_ttl_secs: Option<f64>, now: f64) -> Option<String> {
    let name = &holder.user.name;
    if holder.disabled {
        return Some(format!(
            "account disabled: the admin disabled `{name}`; ask them to enable it (`trainq admin users enable {name}`)"
        ));
    }
    let ttl = token_ttl_secs?;
    let age = now - holder.token_issued_at;
    (age > ttl).then(|| {
        format!(
            "token expired: it was made {:.0} days ago and tokens here work for {:.0} days; ask the admin for a new one \
             (`trainq admin users rotate {name}`), and next time run `trainq token rotate` before it expires",
            (age / 86_400.0).floor(),
            ttl / 86_400.0
        )
    })
}

/// The auth middleware: a missing header makes an anonymous caller; a malformed or unknown token
/// is a 401 at once (a typo should not silently turn into anonymous access); a known user over
/// their request budget gets a 429, and so does an anonymous client address over its own (one
/// bucket per IP address, the same rate: the public queue cannot be polled without limit). Two
/// `Authorization` headers are a 400.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // Two tokens are ambiguous: answering as either one could act as the wrong user.
    if request.headers().get_all(axum::http::header::AUTHORIZATION).iter().nth(1).is_some() {
        return ApiError::Malformed {
            status: axum::http::StatusCode::BAD_REQUEST,
            field: String::from("Authorization"),
            message: String::from("send one `Authorization: Bearer <token>` header, not several"),
        }
        .into_response();
    }
    let caller = match request.headers().get(axum::http::header::AUTHORIZATION) {
        None => {
            let address =
                request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip());
            if let Some(address) = address {
                // User names cannot hold ':', so these buckets never meet a user's.
                if let Err(retry_after) = state.limits.rate.check(&format!("ip:{address}"), Instant::now()) {
                    return ApiError::TooManyRequests {
                        message: format!(
                            "more than {} requests a minute from {address} without a token; slow down, or send your token",
                            state.limits.rate.per_minute
                        ),
                        retry_after_secs: retry_after,
                    }
                    .into_response();
                }
            }
            Caller::Anonymous
        }
        Some(value) => {
            let token = value.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")).map(str::trim);
            let Some(token) = token.filter(|token| !token.is_empty()) else {
                return ApiError::Unauthorized(String::from(
                    "the Authorization header must be `Bearer <token>`; `trainq user add NAME` prints a token",
                ))
                .into_response();
            };
            match state.tokens.holder(&state.store, token).await {
                Ok(Some(holder)) => {
                    if let Some(message) = refusal(&holder, state.limits.token_ttl_secs, crate::store::unix_now()) {
                        return ApiError::Unauthorized(message).into_response();
                    }
                    let user = holder.user;
                    if let Err(retry_after) = state.limits.rate.check(&user.name, Instant::now()) {
                        return ApiError::TooManyRequests {
                            message: format!(
                                "more than {} requests a minute from user `{}`; slow down",
                                state.limits.rate.per_minute, user.name
                            ),
                            retry_after_secs: retry_after,
                        }
                        .into_response();
                    }
                    Caller::User(user)
                }
                Ok(None) => {
                    return ApiError::Unauthorized(String::from(
                        "unknown token; ask the admin for yours (`trainq user add NAME`, or `trainq user token NAME` for a new one)",
                    ))
                    .into_response()
                }
                Err(err) => return ApiError::from(err).into_response(),
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Caller, ApiError> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Anonymous))
    }
}

/// A handler argument that requires a valid token (401 otherwise).
#[derive(Debug, Clone)]
pub struct Authed(pub User);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Authed, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::User(user) => Ok(Authed(user)),
            Caller::Anonymous => Err(ApiError::Unauthorized(String::from(
                "this needs your token: send `Authorization: Bearer <token>` (the admin creates it with `trainq user add NAME`)",
            ))),
        }
    }
}

/// Per-user token buckets: `per_minute` requests a minute on average, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Sustained rate.
    pub per_minute: u32,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests a minute per user, with bursts of a quarter minute's worth
    /// (at least 10).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute, burst: (f64::from(per_minute) / 4.0).max(10.0), buckets: Mutex::default() }
    }

    /// Takes one request from `user`'s bucket, or says in how many whole seconds one is available.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), u64> {
        let rate = f64::from(self.per_minute) / 60.0;
        let mut buckets = self.buckets.lock().expect("rate limiter poisoned");
        let (tokens, at) = buckets.entry(user.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// The 403 of an admin-only route (`GET /api/admin/…`, `POST /api/admin/gc`) for a student:
/// `what` names what they asked for.
pub(super) fn admin_only(user: &User, what: &str) -> Result<(), ApiError> {
    if user.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            field: "Authorization",
            message: format!("{what} is for admins; send an admin's token"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_disabled_account_or_an_old_token_is_refused_with_the_reason_first() {
        let holder = TokenHolder {
            user: User { name: String::from("alice"), admin: false },
            disabled: false,
            token_issued_at: 1_000_000.0,
            last_request_at: None,
        };
        let day = 86_400.0;
        assert_eq!(refusal(&holder, None, 1_000_000.0 + 1000.0 * day), None, "no TTL: tokens work forever");
        assert_eq!(refusal(&holder, Some(30.0 * day), 1_000_000.0 + 29.0 * day), None);
        let expired = refusal(&holder, Some(30.0 * day), 1_000_000.0 + 31.5 * day).unwrap();
        assert!(expired.starts_with("token expired: it was made 31 days ago"), "{expired}");
        assert!(expired.contains("trainq token rotate"), "{expired}");
        let disabled = refusal(&TokenHolder { disabled: true, ..holder }, Some(30.0 * day), 1_000_000.0).unwrap();
        assert!(disabled.starts_with("account disabled"), "{disabled}");
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds_per_user() {
        let limiter = RateLimiter::new(60); // one a second, bursts of 15
        let start = Instant::now();
        for _ in 0..15 {
            assert!(limiter.check("alice", start).is_ok());
        }
        assert_eq!(limiter.check("alice", start), Err(1));
        assert!(limiter.check("bob", start).is_ok(), "buckets are per user");
        assert!(limiter.check("alice", start + Duration::from_millis(1100)).is_ok());
        assert!(limiter.check("alice", start + Duration::from_millis(1200)).is_err());
    }
}
