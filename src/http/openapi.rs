//! The API described as OpenAPI 3.1, generated from the handlers' `#[utoipa::path]` annotations
//! and the types they send (`ToSchema`), so the description cannot drift from the code:
//! `GET /api/openapi.json` for client generators and schemathesis, `GET /api/docs` for people
//! (plain HTML rendered here from the same document: nothing from a CDN, no script).
//!
//! The event streams (`text/event-stream`) are described event by event, the way OpenAPI 3.1
//! tools such as schemathesis read such a response's `schema`: a `oneOf` with one object per
//! event name, `{event, id, data}`, whose `data` is JSON (`contentMediaType`) of a `contentSchema`
//! from the Rust type that is serialized into it. A stream's annotation names its `snapshot`
//! type; `JobEvent` (`crate::events`) gives every other event, and its `type` tag is the event's
//! name. (OpenAPI 3.2 moves this per-event schema to `itemSchema`; the document stays 3.1.)

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::fmt::Write;
use std::sync::OnceLock;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, PartialSchema};

/// Every documented route. The relays' `POST /api/worker/jobs/{id}/lines` is left out: it is
/// internal (a Slurm job's relay reports there with the job's own secret, not a user token).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "trainq",
        description = "A shared GPU box's training queue: submit experiments, follow them, fetch their results. \
            Send `Authorization: Bearer <token>` (the admin runs `trainq user add NAME`); the queue and the catalog are open to everyone. \
            Every error is `{\"error\", \"detail\": {\"field\", \"message\"}}`."
    ),
    paths(
        super::jobs::submit,
        super::job_list::list,
        super::jobs::show,
        super::jobs::cancel,
        super::jobs::resubmit,
        super::events::job_stream,
        super::outputs::metrics,
        super::plots::job_plot,
        super::outputs::log,
        super::outputs::artifacts,
        super::outputs::artifact,
        super::outputs::predictions,
        super::inference::predict,
        super::inference::cam,
        super::groups::show,
        super::compare::table,
        super::report::page,
        super::plots::compare_plot,
        super::events::stream,
        super::catalog::datasets,
        super::catalog::weights,
        super::catalog::backbones,
        super::catalog::examples,
        super::catalog::devices,
        super::me::me,
        super::me::update_me,
        super::me::admin_notifications,
        super::jobs::patch,
        super::jobs::delete,
        super::admin::usage,
        super::admin::gc,
        super::version::version,
        super::backup::backup,
        super::dataset_import::import,
        super::users::list,
        super::users::import,
        super::users::patch,
        super::users::rotate,
        super::users::rotate_own,
        super::reservations::create,
        super::reservations::list,
        super::reservations::delete,
        openapi_json,
        docs,
        super::health::live,
        super::health::ready,
        prometheus,
    ),
    components(schemas(super::error::ErrorBody, crate::events::JobEvent)),
    modifiers(&Conventions, &EventStreams),
    tags(
        (name = "jobs", description = "submit, list, show, cancel, resubmit, change what a queued job waits for"),
        (name = "results", description = "a job's metrics, plots, log, files and model"),
        (name = "events", description = "live server-sent events"),
        (name = "catalog", description = "what jobs can use"),
        (name = "users", description = "who the token is, where their notifications go, a new token; the admin's outbox"),
        (name = "admin", description = "accounts, disk usage and gc, for admins"),
        (name = "health", description = "for load balancers and monitoring"),
        (name = "docs", description = "this description"),
    )
)]
pub struct ApiDoc;

/// What every operation shares and the annotations would only repeat: the bearer scheme, and the
/// errors any route can answer (a bad parameter or token, the request rate, a bug; a missing job
/// for routes with an id; a body over the limit for POSTs), each with the error body.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // `ids` of a comparison name jobs and groups too.
            let with_id = path.contains('{') || path.starts_with("/api/compare");
            // A deleted job's files answer 410; its page, curves, cancel and resubmit do not.
            let files = path.starts_with("/api/jobs/{id}/")
                && !["/cancel", "/resubmit", "/events", "/metrics"].iter().any(|end| path.ends_with(end));
            for (operation, method) in operations_mut(item) {
                // A body's answers (413, 415, 507) for the methods that take one.
                let is_post = matches!(method, "post" | "put" | "patch");
                let mut common = vec![
                    ("400", "a malformed parameter, header or body: `detail.field` names it"),
                    ("401", "a malformed or unknown token (or none where one is needed)"),
                    ("429", "over the request rate (`Retry-After`) or the jobs per user"),
                    ("500", "a bug; the cause is in the server's log"),
                ];
                if with_id {
                    common.push(("404", "no such job, group or file (someone else's job answers the same)"));
                }
                if files {
                    common.push(("410", "the job's files were deleted (`detail.deleted_by`, `deleted_at`)"));
                }
                if method == "delete" {
                    common.push(("507", "the disk is full: nothing was changed (reads keep working)"));
                }
                if is_post {
                    common.push(("413", "the body is over the limit"));
                    common.push(("415", "the body's content type is not the one this route takes"));
                    common.push(("507", "the disk is full: nothing was changed (reads keep working)"));
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// Every operation of a path with its method, for the modifiers that adjust each of them.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&mut Operation, &'static str)> {
    [
        (&mut item.get, "get"),
        (&mut item.post, "post"),
        (&mut item.put, "put"),
        (&mut item.delete, "delete"),
        (&mut item.patch, "patch"),
    ]
    .into_iter()
    .filter_map(|(operation, method)| operation.as_mut().map(|operation| (operation, method)))
}

/// The event streams described event by event (see the module's doc). An annotation can only
/// give `text/event-stream` one type, so it gives the `snapshot` event's data; this turns that
/// into a `oneOf` of the snapshot and every `JobEvent`, each tied to its event name.
struct EventStreams;

/// The media type of server-sent events.
const EVENT_STREAM: &str = "text/event-stream";

impl utoipa::Modify for EventStreams {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let job_event_names = job_event_names();
        for item in openapi.paths.paths.values_mut() {
            for (operation, _) in operations_mut(item) {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else { continue };
                    let Some(content) = response.content.get_mut(EVENT_STREAM) else { continue };
                    let snapshot = content.schema.take().expect("an event stream's annotation names its snapshot type");
                    let mut events = OneOfBuilder::new().item(server_sent_event("snapshot", json_schema(&snapshot)));
                    for name in &job_event_names {
                        events = events.item(server_sent_event(name, job_event_schema(name)));
                    }
                    content.schema = Some(events.into());
                }
            }
        }
    }
}

/// The name of every event a `JobEvent` is sent as: the values of its `type` tag, read from the
/// schema `ToSchema` derives for `EventKind` (a `oneOf` with one member per variant).
fn job_event_names() -> Vec<String> {
    let kinds = json_schema(&crate::events::EventKind::schema());
    let variants = kinds["oneOf"].as_array().expect("EventKind's schema is a oneOf of its variants");
    variants.iter().map(|variant| variant_tag(variant).expect("each EventKind variant has its `type` tag")).collect()
}

/// A variant's `type` tag: on the variant's object, or on one of an `allOf`'s (a variant with a
/// flattened field, like `epoch`, is the tag's object and the field's type together).
fn variant_tag(variant: &Value) -> Option<String> {
    if let Some(tag) = variant["properties"]["type"]["enum"][0].as_str() {
        return Some(tag.to_string());
    }
    variant["allOf"].as_array()?.iter().find_map(variant_tag)
}

/// `JobEvent`'s schema with its `type` fixed to the event's name, as JSON for a `contentSchema`.
fn job_event_schema(name: &str) -> serde_json::Value {
    let job_event = Ref::from_schema_name("JobEvent");
    let tag = ObjectBuilder::new()
        .property("type", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name])))
        .required("type");
    json_schema(&AllOfBuilder::new().item(job_event).item(tag).into())
}

/// A schema as the JSON a `contentSchema` holds.
fn json_schema(schema: &RefOr<Schema>) -> serde_json::Value {
    serde_json::to_value(schema).expect("a schema serializes")
}

/// One server-sent event as a client parses it: its name, its id (the `Last-Event-ID` to resume
/// from), and its `data`, a line of JSON that `data_schema` describes.
fn server_sent_event(name: &str, data_schema: serde_json::Value) -> ObjectBuilder {
    // utoipa has `contentMediaType` but not `contentSchema`: the extensions map serializes any key.
    let content_schema: Extensions = [("contentSchema", data_schema)].into_iter().collect();
    ObjectBuilder::new()
        .title(Some(name))
        .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name])))
        .required("event")
        .property("id", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .extensions(Some(content_schema)),
        )
        .required("data")
}

/// The document as JSON, built once: it is the same for the life of the process.
fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

/// `GET /api/openapi.json`: this API as OpenAPI 3.1.
#[utoipa::path(get, path = "/api/openapi.json", tag = "docs",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// `GET /api/docs`: the OpenAPI document as a page to read, linked from the dashboard's header.
#[utoipa::path(get, path = "/api/docs", tag = "docs",
    responses((status = 200, description = "every operation with its parameters, body and answers", content_type = "text/html", body = String)))]
pub async fn docs() -> Response {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| render(&serde_json::from_str(document()).expect("the document is JSON")));
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, super::security_headers::DOCS_POLICY),
    ];
    (headers, page.as_str()).into_response()
}

/// `GET /metrics`, described here because its handler (`prometheus.rs`) is Prometheus's business.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text: jobs, devices, fair-share usage, disks", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn prometheus() {}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Escaped text with the doc comments' `code` spans set as code.
fn prose(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { format!("<code>{part}</code>") } else { part.to_string() })
        .collect()
}

/// A schema's name (`JobView`, `array of JobSpec`, `string`, `one of snapshot, queued, …`) for the page.
fn schema_name(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return reference.rsplit('/').next().unwrap_or(reference).to_string();
    }
    // An event stream: its events by name (their titles).
    if let Some(options) = schema["oneOf"].as_array() {
        let names: Vec<&str> = options.iter().map(|option| option["title"].as_str().unwrap_or("any JSON")).collect();
        return format!("one of {}", names.join(", "));
    }
    match schema["type"].as_str() {
        Some("array") => format!("array of {}", schema_name(&schema["items"])),
        Some(kind) => kind.to_string(),
        None => String::from("any JSON"),
    }
}

/// Each content type of a body or answer and its schema's name.
fn contents(content: &Value) -> String {
    let Some(content) = content.as_object() else { return String::new() };
    content
        .iter()
        .map(|(kind, media)| format!("{} <code>{}</code>", escape(&schema_name(&media["schema"])), escape(kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The page: one section per operation, in path order, with a table of contents.
fn render(document: &Value) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>trainq API</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         code{font-family:ui-monospace,monospace;background:#f3f3f3;padding:0 .2em}section{border-top:1px solid #ddd;margin-top:1.5rem}\
         .method{font-weight:bold;text-transform:uppercase;margin-right:.5em}table{border-collapse:collapse}td,th{text-align:left;padding:.2em .6em;vertical-align:top}</style>\
         </head><body>\n",
    );
    let info = &document["info"];
    let _ = writeln!(
        page,
        "<h1>{} API {}</h1>",
        escape(info["title"].as_str().unwrap_or("trainq")),
        escape(info["version"].as_str().unwrap_or(""))
    );
    let _ = writeln!(page, "<p>{}</p>", prose(info["description"].as_str().unwrap_or("")));
    let _ = writeln!(page, "<p>The machine-readable document: <a href=\"/api/openapi.json\">/api/openapi.json</a> (OpenAPI {}). <a href=\"/\">Back to the dashboard</a>.</p>", escape(document["openapi"].as_str().unwrap_or("")));
    let empty = serde_json::Map::new();
    let paths = document["paths"].as_object().unwrap_or(&empty);
    let mut sections = String::new();
    page.push_str("<ul>\n");
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap_or(&empty) {
            let anchor = format!("{method}-{}", path.replace(['/', '{', '}', '.'], "-"));
            let summary = operation["summary"].as_str().unwrap_or("");
            let _ = writeln!(
                page,
                "<li><a href=\"#{anchor}\"><span class=\"method\">{method}</span><code>{}</code></a> {}</li>",
                escape(path),
                prose(summary)
            );
            let _ = writeln!(
                sections,
                "<section id=\"{anchor}\"><h2><span class=\"method\">{method}</span><code>{}</code></h2>",
                escape(path)
            );
            if let Some(description) = operation["description"].as_str() {
                let _ = writeln!(sections, "<p>{}</p>", prose(summary));
                let _ = writeln!(sections, "<p>{}</p>", prose(description));
            } else {
                let _ = writeln!(sections, "<p>{}</p>", prose(summary));
            }
            let needs_token = operation["security"]
                .as_array()
                .is_some_and(|ways| !ways.iter().any(|way| way.as_object().is_some_and(|way| way.is_empty())));
            let _ = writeln!(
                sections,
                "<p>{}</p>",
                if needs_token { "Needs your token." } else { "Open to everyone (a token shows more)." }
            );
            if let Some(parameters) = operation["parameters"].as_array().filter(|parameters| !parameters.is_empty()) {
                sections.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>\n");
                for parameter in parameters {
                    let required = if parameter["required"].as_bool() == Some(true) { " (required)" } else { "" };
                    let _ = writeln!(
                        sections,
                        "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(parameter["name"].as_str().unwrap_or("")),
                        escape(parameter["in"].as_str().unwrap_or("")),
                        escape(&schema_name(&parameter["schema"])),
                        prose(parameter["description"].as_str().unwrap_or(""))
                    );
                }
                sections.push_str("</table>\n");
            }
            if let Some(body) = operation.get("requestBody") {
                let _ = writeln!(
                    sections,
                    "<p>Body: {}. {}</p>",
                    contents(&body["content"]),
                    prose(body["description"].as_str().unwrap_or(""))
                );
            }
            sections.push_str("<table><tr><th>answer</th><th></th><th>body</th></tr>\n");
            for (status, response) in operation["responses"].as_object().unwrap_or(&empty) {
                let _ = writeln!(
                    sections,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(status),
                    prose(response["description"].as_str().unwrap_or("")),
                    contents(&response["content"])
                );
            }
            sections.push_str("</table></section>\n");
        }
    }
    page.push_str("</ul>\n");
    page.push_str(&sections);
    let mut schemas: Vec<&String> =
        document["components"]["schemas"].as_object().map(|schemas| schemas.keys().collect()).unwrap_or_default();
    schemas.sort();
    let _ = writeln!(
        page,
        "<section><h2>Schemas</h2><p>{}; their fields are in the JSON document.</p></section>",
        schemas.iter().map(|name| format!("<code>{}</code>", escape(name))).collect::<Vec<_>>().join(", ")
    );
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each event stream's schema holds one object per event the server sends, with `data`
    /// described by the type serialized into it.
    #[test]
    fn event_streams_are_described_event_by_event() {
        let document: Value = serde_json::from_str(document()).unwrap();
        let names =
            ["snapshot", "queued", "started", "progress", "epoch", "cancel_requested", "finished", "log", "deleted"];
        for (path, snapshot) in [("/api/events", "QueueSnapshot"), ("/api/jobs/{id}/events", "JobSnapshot")] {
            let schema = &document["paths"][path]["get"]["responses"]["200"]["content"][EVENT_STREAM]["schema"];
            let events = schema["oneOf"].as_array().unwrap_or_else(|| panic!("{path}: {schema}"));
            let described: Vec<&str> =
                events.iter().map(|event| event["properties"]["event"]["enum"][0].as_str().unwrap()).collect();
            assert_eq!(described, names, "{path}");
            let data = &events[0]["properties"]["data"];
            assert_eq!(data["contentMediaType"], "application/json");
            assert_eq!(data["contentSchema"]["$ref"], format!("#/components/schemas/{snapshot}"));
            assert!(document["components"]["schemas"][snapshot].is_object(), "{snapshot} is a component");
        }
        assert!(document["components"]["schemas"]["JobEvent"].is_object());
    }
}
