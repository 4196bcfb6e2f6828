//! Conditional GETs for JSON answers: each carries an `ETag` (a hash of its exact bytes) and
//! `Cache-Control: no-cache`, so a browser asks again every time but a request whose
//! `If-None-Match` names the current tag gets `304 Not Modified` without the body. A dashboard
//! left open, or a script polling the queue, then moves a few hundred bytes while nothing changed.

use super::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The entity tag of a body: the first 128 bits of its SHA-256 in hex, quoted. Strong, since it
/// names the exact bytes (no layer re-encodes them); `If-None-Match` compares weakly anyway.
pub fn tag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("\"{hex}\"")
}

/// The opaque tags of an `If-None-Match` list (`"a", W/"b"`), without their `W/`; `None` for
/// `*`. Parsing stops at anything malformed, so a garbled header matches less, never more.
fn listed_tags(value: &str) -> Option<Vec<&str>> {
    if value.trim() == "*" {
        return None;
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let unweak = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(open) = unweak.strip_prefix('"') else { return Some(tags) };
        let Some(close) = open.find('"') else { return Some(tags) };
        tags.push(&open[..close]);
        rest = &open[close + 1..];
    }
}

/// Whether the request's `If-None-Match` headers match `tag` by weak comparison (RFC 9110
/// §13.1.2): `*`, or a listed tag equal to it with or without `W/`.
pub fn none_match_hits(request: &HeaderMap, tag: &str) -> bool {
    let opaque = tag.trim_start_matches("W/").trim_matches('"');
    request.get_all(header::IF_NONE_MATCH).iter().filter_map(|value| value.to_str().ok()).any(
        |value| match listed_tags(value) {
            None => true,
            Some(tags) => tags.contains(&opaque),
        },
    )
}

/// `value` as a JSON 200 with its `ETag`, or a bodiless 304 when the request already has it.
/// `Vary: Authorization`: what the list shows of a job (its error, its results) depends on who asks.
pub fn json<T: Serialize>(request: &HeaderMap, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(anyhow::Error::from)?;
    let tag = tag_of(&body);
    let headers = [
        (header::ETAG, HeaderValue::from_str(&tag).expect("a quoted hex tag is a header value")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::VARY, HeaderValue::from_static("authorization")),
    ];
    if none_match_hits(request, &tag) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let content_type = (header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok((headers, [content_type], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking<S: AsRef<str>>(values: &[S]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(value.as_ref()).unwrap());
        }
        headers
    }

    #[test]
    fn the_tag_names_the_bytes() {
        assert_eq!(tag_of(b"[]"), tag_of(b"[]"));
        assert_ne!(tag_of(b"[]"), tag_of(b"[ ]"));
        let tag = tag_of(b"{}");
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34, "{tag}");
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_a_star() {
        let tag = tag_of(b"{}");
        let hits: [Vec<String>; 7] = [
            vec![tag.clone()],
            vec![format!("W/{tag}")],
            vec![String::from("*")],
            vec![String::from(" * ")],
            vec![format!("\"other\", W/{tag}")],
            vec![format!("W/\"a,b\",{tag}")],
            vec![String::from("\"other\""), tag.clone()],
        ];
        for values in hits {
            assert!(none_match_hits(&asking(&values), &tag), "{values:?}");
        }
        let misses: [Vec<String>; 7] = [
            vec![],
            vec![String::from("\"other\"")],
            vec![tag.trim_matches('"').to_string()],
            vec![format!("{}x\"", &tag[..tag.len() - 1])],
            vec![format!("garbage {tag}")],
            vec![String::from("W/")],
            vec![String::from("\"unterminated")],
        ];
        for values in misses {
            assert!(!none_match_hits(&asking(&values), &tag), "{values:?}");
        }
    }

    #[tokio::test]
    async fn a_matching_request_gets_304_without_a_body_and_the_same_headers() {
        let value = serde_json::json!({"jobs": []});
        let fresh = json(&HeaderMap::new(), &value).unwrap();
        assert_eq!(fresh.status(), StatusCode::OK);
        let tag = fresh.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(fresh.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(fresh.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(fresh.into_body(), usize::MAX).await.unwrap();
        assert_eq!(tag_of(&bytes), tag);
        let again = json(&asking(&[&tag]), &value).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        assert_eq!(again.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(axum::body::to_bytes(again.into_body(), usize::MAX).await.unwrap().is_empty());
        let changed = json(&asking(&[&tag]), &serde_json::json!({"jobs": [1]})).unwrap();
        assert_eq!(changed.status(), StatusCode::OK);
    }
}
