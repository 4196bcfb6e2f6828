//! Live events over server-sent events: a job's life from queued to finished with its epochs and
//! log lines, catching up with `Last-Event-ID` or from a snapshot, and the per-job stream.

use crate::helpers::{small_spec, TestApp};
use crate::results::{results_app, ResultsApp};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads a `text/event-stream` response event by event.
struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request = app.client.get(app.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventStream { response, buffer: Vec::new() }
    }

    /// The next event (keep-alive comments skipped), or a panic after `WAIT`.
    async fn next(&mut self) -> Sse {
        tokio::time::timeout(WAIT, self.read()).await.expect("no event within the timeout")
    }

    async fn read(&mut self) -> Sse {
        loop {
            // Bytes until a whole event is in: a chunk may end inside a UTF-8 character.
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block = String::from_utf8(self.buffer.drain(..end + 2).collect()).unwrap();
                let (mut name, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Sse { name, id, data: serde_json::from_str(&data).unwrap() };
            }
            let chunk = self.response.chunk().await.unwrap().expect("the event stream ended");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Events until (and with) the `finished` event of `job`.
    async fn until_finished(&mut self, job: &str) -> Vec<Sse> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.name == "finished" && event.data["job_id"] == job;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|event| event.name.as_str()).collect()
}

#[tokio::test]
async fn the_event_stream_follows_a_job_and_a_late_subscriber_catches_up() {
    let ResultsApp { app, _scripts } = results_app(1);
    let mut stream = EventStream::open(&app, "/api/events", None).await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.name, "snapshot");
    // What the dashboard opens with: the active queue and alice's own newest jobs, both empty.
    let empty = serde_json::json!({"jobs": [], "next_cursor": null});
    assert_eq!(snapshot.data, serde_json::json!({"pages": {"active": empty, "mine": empty}}));
    // A query naming a list gets that list's first page instead.
    let mut listed = EventStream::open(&app, "/api/events?state=failed,cancelled&limit=5", None).await;
    assert_eq!(listed.next().await.data, serde_json::json!({"pages": {"list": empty}}));

    let id = app.submit(&small_spec("live")).await;
    let events = stream.until_finished(&id).await;
    let order = names(&events);
    let position = |name: &str| order.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no {name}: {order:?}"));
    assert!(position("queued") < position("started") && position("started") < position("epoch"), "{order:?}");
    assert_eq!(order.iter().filter(|n| **n == "epoch").count(), 3, "{order:?}");
    assert!(order.contains(&"progress"), "{order:?}");
    for event in &events {
        assert_eq!(event.data["job_id"], id.as_str(), "{event:?}");
        assert!(event.id.is_some(), "every live event has an id: {event:?}");
    }
    let epoch = &events[position("epoch")].data;
    assert_eq!(
        (epoch["phase"].as_u64(), epoch["epoch"].as_u64(), epoch["train_acc"].as_f64()),
        (Some(1), Some(1), Some(0.55))
    );
    let finished = &events.last().unwrap().data;
    assert_eq!(finished["state"], "succeeded");
    // The worker's stderr arrives as log lines, at their offsets in the log file.
    let (_, log) = app.text(&format!("/api/jobs/{id}/log")).await;
    let hello =
        events.iter().find(|e| e.name == "log" && e.data["line"] == "worker says hello").expect("the stderr line");
    let offset = hello.data["offset"].as_u64().unwrap() as usize;
    assert!(log[offset..].starts_with("worker says hello\n"), "offset {offset} in {log:?}");

    // A subscriber that saw up to `started` gets exactly the rest, with no snapshot.
    let started = events[position("started")].id.clone().unwrap();
    let mut late = EventStream::open(&app, "/api/events", Some(&started)).await;
    let replayed = late.until_finished(&id).await;
    let expected: Vec<&Option<String>> = events[position("started") + 1..].iter().map(|e| &e.id).collect();
    let got: Vec<&Option<String>> = replayed.iter().map(|e| &e.id).collect();
    assert_eq!(got, expected);

    // An id from nowhere (another server run, say) starts from a snapshot of the database.
    let mut lost = EventStream::open(&app, "/api/events", Some("0badb00t-17")).await;
    let snapshot = lost.next().await;
    assert_eq!(snapshot.name, "snapshot");
    // The finished job has left the active queue; it leads alice's own jobs.
    assert_eq!(snapshot.data["pages"]["active"]["jobs"], serde_json::json!([]));
    let jobs = snapshot.data["pages"]["mine"]["jobs"].as_array().unwrap();
    assert_eq!((jobs.len(), jobs[0]["state"].as_str()), (1, Some("succeeded")));
    // Its id resumes after everything the snapshot covers: nothing more to replay.
    let mut resumed = EventStream::open(&app, "/api/events", snapshot.id.as_deref()).await;
    let next = app.submit(&small_spec("next")).await;
    let first = resumed.next().await;
    assert_eq!((first.name.as_str(), first.data["job_id"].as_str()), ("queued", Some(next.as_str())));
}

#[tokio::test]
async fn the_job_stream_starts_with_the_job_its_epochs_and_its_log() {
    let ResultsApp { app, _scripts } = results_app(1);
    // `first` holds the only slot, so `second` is surely queued when its stream opens.
    let first = app.submit(&small_spec("wait")).await;
    app.wait_for_state(&first, "running", WAIT).await;
    let second = app.submit(&small_spec("second")).await;
    let mut stream = EventStream::open(&app, &format!("/api/jobs/{second}/events"), None).await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.name, "snapshot");
    assert_eq!(
        (snapshot.data["job"]["id"].as_str(), snapshot.data["job"]["state"].as_str()),
        (Some(second.as_str()), Some("queued"))
    );
    assert_eq!(snapshot.data["job"]["position"], 1);
    app.post(&format!("/api/jobs/{first}/cancel"), &serde_json::json!({})).await;
    // Only its own events come, though `first` is cancelled meanwhile.
    let events = stream.until_finished(&second).await;
    assert!(events.iter().all(|e| e.data["job_id"] == second.as_str()), "{events:?}");
    assert!(names(&events).contains(&"started") && names(&events).contains(&"epoch"), "{events:?}");

    // After the fact, the snapshot alone tells the whole story.
    let mut stream = EventStream::open(&app, &format!("/api/jobs/{second}/events"), None).await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.data["job"]["state"], "succeeded");
    assert_eq!(snapshot.data["epochs"].as_array().unwrap().len(), 3);
    let (_, log) = app.text(&format!("/api/jobs/{second}/log")).await;
    assert!(log.contains("worker says hello"), "{log}");
    assert_eq!(snapshot.data["log"]["text"], log.as_str());
    assert_eq!(snapshot.data["log"]["offset"].as_u64(), Some(log.len() as u64));

    let (status, body) = app.get(&format!("/api/jobs/{}/events", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].is_string());
}
