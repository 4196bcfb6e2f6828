//! The security headers of every answer: a Content-Security-Policy (the dashboard's, unless a
//! handler set its own: the HW report and `/api/docs`), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, and `Strict-Transport-Security` when the server speaks TLS.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;

/// The dashboard's policy: its own files only, no inline script, no framing. Images and
/// downloads it makes from fetched bytes are `blob:` URLs (which a page may read back, as the
/// browser test does with a download), and the report's heatmaps `data:` ones. Inline styles are allowed because the HW report the dashboard opens from a `blob:` URL
/// inherits this policy, and its page carries its style inline (a style cannot run code).
pub const DASHBOARD_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                                    img-src 'self' blob: data:; connect-src 'self' blob:; object-src 'none'; \
                                    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/api/docs`: one page with its style inline and nothing else to load.
pub const DOCS_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Adds the headers to `response`; a policy a handler set stays.
pub async fn add(State(transport): State<crate::tls::Transport>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(DASHBOARD_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if transport.tls {
        headers
            .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(crate::tls::STRICT_TRANSPORT_SECURITY));
    }
    response
}
