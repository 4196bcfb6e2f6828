//! Live events: what happened to jobs (queued, started, progress, epoch, finished, log lines), in
//! order, for `GET /api/events`, the per-job stream and the dashboard.
//!
//! One in-process bus: whoever changes a job publishes after the change is stored, so an event
//! never announces something the REST API cannot show yet. Each event gets a sequence number and
//! an id `<boot>-<seq>`, where `boot` is random per server start; a client that reconnects with
//! `Last-Event-ID` gets exactly the events it missed from a ring of recent events, and one whose
//! id is from another server run, or too old for the ring, is told to start from a snapshot. The
//! database stays the truth: events are a convenience that a snapshot can always replace.

use crate::domain::worker_protocol::EpochMetrics;
use crate::domain::{JobId, JobProgress, JobState};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How many recent events a reconnecting client can catch up on. Log lines dominate; at a few
/// lines a second per job this covers minutes of every running job.
const REPLAY_CAPACITY: usize = 8192;

/// How far a slow live subscriber may fall behind before it is told to resynchronise. The
/// scheduler is one: a burst of submissions at 2,000/s fills 1,024 slots while one pass waits on
/// the database for half a second, and falling behind costs it a reload of the whole queue (100,000
/// specs parsed), which made it fall behind again. 16,384 slots are eight seconds of such a burst,
/// a few megabytes.
const LIVE_CAPACITY: usize = 16_384;

/// What happened, as the `data` of a server-sent event whose name is the variant's `type`.
/// `http::openapi` reads the event names from this type's schema, so each variant is described
/// in `/api/openapi.json` without a list that could drift.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A submission was accepted.
    Queued {
        /// The spec's name.
        name: String,
    },
    /// A worker was started for the job.
    Started {
        /// The device slot it holds.
        device: String,
    },
    /// The job's progress snapshot changed (at most twice a second while training).
    Progress {
        /// The same value as `progress` in `GET /api/jobs/{id}`.
        progress: JobProgress,
    },
    /// An epoch finished: one more point on the curves.
    Epoch {
        /// The same row as in `GET /api/jobs/{id}/metrics`.
        #[serde(flatten)]
        metrics: EpochMetrics,
    },
    /// A running job was asked to stop; `finished` follows when its worker has exited.
    CancelRequested,
    /// The job reached a terminal state.
    Finished {
        /// `succeeded`, `failed` or `cancelled`.
        state: JobState,
        /// Why it failed, with the log's tail.
        error: Option<String>,
    },
    /// A line was appended to the job's log.
    Log {
        /// The line, without its newline.
        line: String,
        /// Byte offset of the line in `log.txt`, so a client that read the log up to some length
        /// can skip the lines it already has.
        offset: u64,
    },
    /// A finished job's files were deleted (`DELETE /api/jobs/{id}`, gc, retention); its row
    /// stays with `deleted_at` and `deleted_by`.
    Deleted {
        /// A user name, or `gc` / `retention`.
        by: String,
    },
}

impl EventKind {
    /// The server-sent event name (`queued`, `progress`, …).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Queued { .. } => "queued",
            EventKind::Started { .. } => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Epoch { .. } => "epoch",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Finished { .. } => "finished",
            EventKind::Log { .. } => "log",
            EventKind::Deleted { .. } => "deleted",
        }
    }
}

/// One published event; serialized, the `data` of its server-sent event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobEvent {
    /// Position in this server run's event order, from 1.
    #[serde(skip)]
    pub seq: u64,
    /// The job it is about.
    pub job_id: JobId,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where a new subscriber starts.
#[derive(Debug)]
pub enum CatchUp {
    /// The client is up to date with its `Last-Event-ID` once it has these events.
    Replay(Vec<Arc<JobEvent>>),
    /// The client has no usable position (none given, another server run, or older than the
    /// ring): it must load a snapshot of the current state first.
    Snapshot,
}

/// A live subscription: the catch-up, then every later event in order.
pub struct Subscription {
    /// What to send before live events.
    pub catch_up: CatchUp,
    /// Live events published after the catch-up.
    pub live: broadcast::Receiver<Arc<JobEvent>>,
    /// The id of the last event published before this subscription: a snapshot taken after
    /// subscribing covers everything up to it, so a client that reconnects with it misses nothing.
    pub resume_id: String,
}

struct Ring {
    next_seq: u64,
    recent: VecDeque<Arc<JobEvent>>,
}

/// The event bus; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    boot: Arc<str>,
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Arc<JobEvent>>,
    closed: CancellationToken,
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("boot", &self.boot).finish_non_exhaustive()
    }
}

impl EventBus {
    /// A bus for one server run, with a fresh random boot id.
    pub fn new() -> EventBus {
        let boot = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        EventBus {
            boot: boot.into(),
            ring: Arc::new(Mutex::new(Ring { next_seq: 1, recent: VecDeque::with_capacity(REPLAY_CAPACITY) })),
            live,
            closed: CancellationToken::new(),
        }
    }

    /// Publishes an event about `job_id`. Sent under the ring's lock, so live order is id order.
    pub fn publish(&self, job_id: JobId, kind: EventKind) {
        let mut ring = self.ring.lock().expect("event ring poisoned");
        let event = Arc::new(JobEvent { seq: ring.next_seq, job_id, kind });
        ring.next_seq += 1;
        if ring.recent.len() == REPLAY_CAPACITY {
            ring.recent.pop_front();
        }
        ring.recent.push_back(event.clone());
        // No subscribers is not an error: nobody is watching.
        let _ = self.live.send(event);
    }

    /// The id a client echoes back as `Last-Event-ID`.
    pub fn event_id(&self, event: &JobEvent) -> String {
        format!("{}-{}", self.boot, event.seq)
    }

    /// Subscribes from a client's `Last-Event-ID` (or from nothing). Taken under the ring's lock,
    /// so no event falls between the catch-up and the live stream, and none comes twice.
    pub fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let ring = self.ring.lock().expect("event ring poisoned");
        let live = self.live.subscribe();
        let catch_up = match last_event_id.and_then(|id| self.parse_seq(id)) {
            // Anything after `seq` must still be in the ring: its first event is at most seq + 1.
            Some(seq) if seq < ring.next_seq && ring.recent.front().is_none_or(|first| first.seq <= seq + 1) => {
                CatchUp::Replay(ring.recent.iter().filter(|event| event.seq > seq).cloned().collect())
            }
            _ => CatchUp::Snapshot,
        };
        Subscription { catch_up, live, resume_id: format!("{}-{}", self.boot, ring.next_seq - 1) }
    }

    /// The sequence number of an id from this server run.
    fn parse_seq(&self, id: &str) -> Option<u64> {
        let (boot, seq) = id.trim().split_once('-')?;
        (boot == &*self.boot).then(|| seq.parse().ok()).flatten()
    }

    /// Ends every stream (at shutdown, so open event streams do not hold the server up).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Completes when the bus is closed.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closed.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document reads the event names from the serde `type` tag, and the stream sends
    /// `name()` as each event's name: the two must agree for every variant.
    #[test]
    fn every_event_name_is_its_serde_type_tag() {
        let epoch = EpochMetrics {
            phase: 1,
            epoch: 1,
            train_loss: 0.5,
            train_acc: 0.5,
            val_loss: None,
            val_acc: None,
            seconds: 1.0,
        };
        let kinds = [
            EventKind::Queued { name: "q1".into() },
            EventKind::Started { device: "cpu0".into() },
            EventKind::Progress { progress: JobProgress::default() },
            EventKind::Epoch { metrics: epoch },
            EventKind::CancelRequested,
            EventKind::Finished { state: JobState::Failed, error: None },
            EventKind::Log { line: "x".into(), offset: 0 },
            EventKind::Deleted { by: "gc".into() },
        ];
        for kind in kinds {
            let json = serde_json::to_value(JobEvent { seq: 1, job_id: JobId::new(), kind: kind.clone() }).unwrap();
            assert_eq!(json["type"], kind.name(), "{json}");
        }
    }

    fn log(line: &str) -> EventKind {
        EventKind::Log { line: line.to_string(), offset: 0 }
    }

    fn lines(events: &[Arc<JobEvent>]) -> Vec<String> {
        events
            .iter()
            .map(|event| match &event.kind {
                EventKind::Log { line, .. } => line.clone(),
                other => other.name().to_string(),
            })
            .collect()
    }

    #[test]
    fn a_reconnecting_client_gets_exactly_what_it_missed() {
        let bus = EventBus::new();
        let job = JobId::new();
        bus.publish(job, log("a"));
        assert!(matches!(bus.subscribe(None).catch_up, CatchUp::Snapshot), "no id: start from a snapshot");
        bus.publish(job, log("b"));
        let seen = bus.ring.lock().unwrap().recent[1].clone();
        bus.publish(job, log("c"));
        bus.publish(job, EventKind::CancelRequested);
        let again = bus.subscribe(Some(&bus.event_id(&seen)));
        match again.catch_up {
            CatchUp::Replay(events) => assert_eq!(lines(&events), ["c", "cancel_requested"]),
            CatchUp::Snapshot => panic!("a known id replays"),
        }
        // Up to date: an empty replay, not a snapshot; a snapshot's resume id is up to date too.
        let latest = bus.ring.lock().unwrap().recent.back().cloned().unwrap();
        assert!(matches!(bus.subscribe(Some(&bus.event_id(&latest))).catch_up, CatchUp::Replay(ref e) if e.is_empty()));
        let resume = bus.subscribe(None).resume_id;
        assert_eq!(resume, bus.event_id(&latest));
        assert!(matches!(bus.subscribe(Some(&resume)).catch_up, CatchUp::Replay(ref e) if e.is_empty()));
        // Before any event, the resume id still works.
        let fresh = EventBus::new();
        let resume = fresh.subscribe(None).resume_id;
        fresh.publish(job, log("first"));
        assert!(matches!(fresh.subscribe(Some(&resume)).catch_up, CatchUp::Replay(ref e) if e.len() == 1));
    }

    #[test]
    fn ids_from_another_run_or_out_of_reach_need_a_snapshot() {
        let bus = EventBus::new();
        let job = JobId::new();
        for i in 0..(REPLAY_CAPACITY + 10) {
            bus.publish(job, log(&i.to_string()));
        }
        let other_run = EventBus::new();
        for stale in [
            format!("{}-3", other_run.boot),
            format!("{}-3", bus.boot),
            format!("{}-999999999", bus.boot),
            String::from("garbage"),
            String::from("12"),
        ] {
            assert!(matches!(bus.subscribe(Some(&stale)).catch_up, CatchUp::Snapshot), "{stale}");
        }
        // The oldest event still in the ring is reachable from the one before it.
        let oldest = bus.ring.lock().unwrap().recent.front().unwrap().seq;
        match bus.subscribe(Some(&format!("{}-{}", bus.boot, oldest - 1))).catch_up {
            CatchUp::Replay(events) => assert_eq!(events.len(), REPLAY_CAPACITY),
            CatchUp::Snapshot => panic!("still in reach"),
        }
    }

    #[tokio::test]
    async fn live_events_follow_the_catch_up_in_order() {
        let bus = EventBus::new();
        let job = JobId::new();
        let mut subscription = bus.subscribe(None);
        bus.publish(job, log("x"));
        bus.publish(job, EventKind::Finished { state: JobState::Succeeded, error: None });
        let first = subscription.live.recv().await.unwrap();
        let second = subscription.live.recv().await.unwrap();
        assert_eq!((first.seq + 1, lines(std::slice::from_ref(&second))[0].as_str()), (second.seq, "finished"));
        let json = serde_json::to_value(&*second).unwrap();
        assert_eq!(json, serde_json::json!({"job_id": job, "type": "finished", "state": "succeeded", "error": null}));
    }
}
