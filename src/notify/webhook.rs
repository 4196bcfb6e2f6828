//! Webhooks: a JSON POST signed with HMAC-SHA256 under the user's secret; any 2xx answer is a
//! delivery, anything else (or no answer within the timeout) a failed attempt.

use super::message::{signature, DELIVERY_HEADER, SIGNATURE_HEADER};
use std::time::Duration;

/// How long a receiver may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client webhooks go out through: a timeout, and no redirects (a signed body is for the
/// URL the user gave, not wherever it points).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WEBHOOK_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // Webhooks are rare: no idle connection (and no timer reaping it) is kept between them.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("trainq/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the webhook client builds")
}

/// POSTs `body` to `url`, signed with `secret`, as delivery `delivery`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    delivery: i64,
) -> Result<(), String> {
    let signed = signature(secret, &body);
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signed)
        .header(DELIVERY_HEADER, delivery.to_string())
        .body(body)
        .send()
        .await
        .map_err(|err| format!("webhook: {}", super::error_chain(&err)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(200).collect();
    Err(format!("webhook: {url} answered {status}: {excerpt}"))
}
