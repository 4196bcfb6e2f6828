//! The dashboard's files, compiled into the binary: `cargo install` and a copied binary serve the
//! dashboard from any folder, with nothing to install beside them. `--static-dir` serves a
//! folder instead (development: edit, reload). The page loads `app.js` as an ES module, which
//! imports the others from `js/`: every one of them is listed in `ASSETS` and served as
//! `text/javascript`, the type a browser requires before it runs a module.

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

/// One embedded file: its path under `static/` (as the URL names it) and its bytes.
struct Asset {
    path: &'static str,
    body: &'static [u8],
}

/// Embeds one file of `static/`, named by its path there: the URL path and the file are one string.
macro_rules! asset {
    ($path:literal) => {
        Asset { path: $path, body: include_bytes!(concat!("../../static/", $path)) }
    };
}

/// Every file of `static/`, sub-folders included (a test checks that none is missing): the page,
/// its style, the entry module `app.js` and the ES modules it imports from `js/`.
const ASSETS: [Asset; 18] = [
    asset!("index.html"),
    asset!("style.css"),
    asset!("app.js"),
    asset!("js/account.js"),
    asset!("js/users.js"),
    asset!("js/api.js"),
    asset!("js/charts.js"),
    asset!("js/compare.js"),
    asset!("js/dom.js"),
    asset!("js/files.js"),
    asset!("js/format.js"),
    asset!("js/job-outputs.js"),
    asset!("js/job-page.js"),
    asset!("js/progress.js"),
    asset!("js/queue.js"),
    asset!("js/reservations.js"),
    asset!("js/stream.js"),
    asset!("js/submit.js"),
];

/// The `Content-Type` of a file, from its extension. Module scripts must come with a JavaScript
/// type, or the browser refuses to run them; a file of another kind needs its type added here.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Each asset's `ETag`, from its bytes, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        use sha2::Digest;
        ASSETS.iter().map(|asset| format!("\"{}\"", &format!("{:x}", sha2::Sha256::digest(asset.body))[..16])).collect()
    })
}

/// Serves an embedded file (`/` is `index.html`): `304` when the browser has this version, and
/// `no-cache` so a new binary's dashboard is picked up at once; anything else is a 404.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(index) = ASSETS.iter().position(|asset| asset.path == path) else {
        return super::ApiError::NotFound(format!(
            "no page or file `/{path}`; the dashboard is at `/`, the API under `/api`"
        ))
        .into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
    }
    let (asset, etag) = (&ASSETS[index], &etags()[index]);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    let common = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, String::from("no-cache"))];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let body = if method == Method::HEAD { &[][..] } else { asset.body };
    let length = [
        (header::CONTENT_LENGTH, asset.body.len().to_string()),
        (header::CONTENT_TYPE, content_type(asset.path).to_string()),
    ];
    (common, length, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths of every file under `folder`, relative to `root`, with `/` between folders.
    fn files_under(root: &std::path::Path, folder: &std::path::Path) -> Vec<String> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(files_under(root, &path));
            } else {
                let relative = path.strip_prefix(root).unwrap();
                files.push(
                    relative.components().map(|part| part.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"),
                );
            }
        }
        files
    }

    #[test]
    fn every_file_of_the_static_folder_is_embedded() {
        let folder = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/static"));
        let mut files = files_under(folder, folder);
        files.sort();
        let mut embedded: Vec<&str> = ASSETS.iter().map(|asset| asset.path).collect();
        embedded.sort();
        assert_eq!(files, embedded, "add the new file to ASSETS");
    }

    #[test]
    fn every_embedded_file_has_a_known_content_type() {
        for asset in &ASSETS {
            assert_ne!(
                content_type(asset.path),
                "application/octet-stream",
                "{}: add its type to content_type",
                asset.path
            );
        }
    }

    #[tokio::test]
    async fn a_known_version_is_not_sent_again() {
        let first = serve(Method::GET, Uri::from_static("/"), HeaderMap::new()).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(
            serve(Method::GET, Uri::from_static("/index.html"), headers).await.status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(Method::GET, Uri::from_static("/nope.js"), HeaderMap::new()).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn modules_in_a_sub_folder_are_served_as_javascript() {
        let module = serve(Method::GET, Uri::from_static("/js/api.js"), HeaderMap::new()).await;
        assert_eq!(module.status(), StatusCode::OK);
        assert_eq!(module.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    }
}
