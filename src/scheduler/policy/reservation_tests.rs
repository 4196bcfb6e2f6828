//! The planner under lab reservations, with an injected clock: during an occurrence, before it,
//! after it, across a weekly wrap; and a property over random boxes, queues and reservations.

use super::*;
use crate::domain::reservation::{Reservation, WEEK_SECONDS};
use crate::domain::Timestamp;
use proptest::collection::vec;
use proptest::prelude::*;

/// Tuesday 8 December 2026, 14:00 UTC: when lab-b begins.
const LAB_START: f64 = 1_796_738_400.0;
const HOUR: f64 = 3600.0;

const SHARED: Limits = Limits { max_jobs_per_gpu: 4, headroom_bytes: 0, max_running_per_user: None };

fn job(job: u32, user: &'static str, seq: i64, limit_hours: Option<f64>) -> Candidate<u32, &'static str> {
    Candidate { job, user, priority: 0, seq, memory_bytes: 0, limit_seconds: limit_hours.map(|hours| hours * HOUR) }
}

fn slot(id: &'static str) -> DeviceState<&'static str, &'static str> {
    DeviceState { id, capacity: Capacity::Slot, running: Vec::new(), foreign_busy: false }
}

/// lab-b on the first device, for alice, 14:00–16:00 (weekly if asked), seen at `now`.
fn lab_b(now: f64, weekly: bool, devices: usize) -> Reservations<&'static str> {
    let lab = Reservation {
        name: String::from("lab-b"),
        devices: vec![String::from("gpu0")],
        start: Timestamp::from_unix_seconds(LAB_START).unwrap(),
        end: Timestamp::from_unix_seconds(LAB_START + 2.0 * HOUR).unwrap(),
        weekly,
        users: vec![String::from("alice")],
    };
    let mut by_device = vec![Vec::new(); devices];
    if let Some(occurrence) = lab.occurrence_at(now) {
        by_device[0].push(ReservedSpan {
            device_label: String::from("GPU 0"),
            name: lab.name.clone(),
            occurrence,
            users: vec!["alice"],
        });
    }
    Reservations { now, by_device }
}

fn run(
    queued: &[Candidate<u32, &'static str>],
    devices: &[DeviceState<&'static str, &'static str>],
    reservations: &Reservations<&'static str>,
) -> Plan<u32, &'static str> {
    plan_within(queued, devices, &HashMap::new(), &SHARED, &Budgets::default(), reservations)
}

fn reason(plan: &Plan<u32, &'static str>, job: u32) -> String {
    plan.waiting.iter().find(|waiting| waiting.job == job).expect("the job waits").reason.to_string()
}

#[test]
fn during_a_reservation_only_its_users_start_on_its_device() {
    let now = LAB_START + HOUR;
    let queued = [job(1, "bob", 1, Some(1.0)), job(2, "alice", 2, Some(1.0))];
    let plan = run(&queued, &[slot("gpu0")], &lab_b(now, false, 1));
    assert_eq!(plan.assignments, [(2, "gpu0")], "alice's job starts though bob's came first");
    assert_eq!(
        reason(&plan, 1),
        "GPU 0 is reserved for lab-b, Tue 8 Dec 14:00–16:00 UTC; only its users' jobs start there now, \
         so yours starts on another device or after it"
    );
    // With another device free, bob's job goes there instead of waiting.
    let plan = run(&queued[..1], &[slot("gpu0"), slot("gpu1")], &lab_b(now, false, 2));
    assert_eq!(plan.assignments, [(1, "gpu1")]);
}

#[test]
fn before_a_reservation_only_jobs_whose_limit_ends_by_its_start_go_there() {
    let now = LAB_START - 2.0 * HOUR;
    let queued = [job(1, "bob", 1, Some(4.0)), job(2, "bob", 2, None), job(3, "bob", 3, Some(2.0))];
    let plan = run(&queued, &[slot("gpu0")], &lab_b(now, false, 1));
    // The 4 h job and the unlimited one wait without holding back bob's 2 h job, which ends
    // exactly when the lab begins.
    assert_eq!(plan.assignments, [(3, "gpu0")]);
    assert_eq!(
        reason(&plan, 1),
        "GPU 0 is reserved for lab-b, Tue 8 Dec 14:00–16:00 UTC; your job's 4 h limit would overlap"
    );
    assert_eq!(
        reason(&plan, 2),
        "GPU 0 is reserved for lab-b, Tue 8 Dec 14:00–16:00 UTC; your job has no time limit, so it could overlap; \
         a time_limit that ends before it lets it start there"
    );
    assert!(plan.reserved.is_none(), "a job held by a reservation keeps no device");
    // The rule is for everyone before it begins, its users too.
    let plan = run(&[job(4, "alice", 1, Some(4.0))], &[slot("gpu0")], &lab_b(now, false, 1));
    assert!(plan.assignments.is_empty());
}

#[test]
fn after_a_one_off_reservation_its_device_is_everyones() {
    let now = LAB_START + 2.0 * HOUR;
    let queued = [job(1, "bob", 1, None)];
    let plan = run(&queued, &[slot("gpu0")], &lab_b(now, false, 1));
    assert_eq!(plan.assignments, [(1, "gpu0")]);
    // The same span handed over stale (ended) keeps no one off either.
    let mut stale = lab_b(LAB_START, false, 1);
    stale.now = now;
    assert_eq!(run(&queued, &[slot("gpu0")], &stale).assignments, [(1, "gpu0")]);
}

#[test]
fn a_weekly_reservation_wraps_to_next_week() {
    // Just after this week's lab: next Tuesday's is 166 h away.
    let now = LAB_START + 2.0 * HOUR;
    let reservations = lab_b(now, true, 1);
    assert_eq!(reservations.by_device[0][0].occurrence.start, LAB_START + WEEK_SECONDS);
    let queued = [job(1, "bob", 1, Some(100.0)), job(2, "bob", 2, None)];
    let plan = run(&queued, &[slot("gpu0"), slot("gpu1")], &reservations);
    assert_eq!(plan.assignments, [(1, "gpu0"), (2, "gpu1")], "only the unlimited job avoids gpu0");
    let plan = run(&[job(3, "bob", 1, Some(167.0))], &[slot("gpu0")], &reservations);
    assert_eq!(
        reason(&plan, 3),
        "GPU 0 is reserved for lab-b, Tue 15 Dec 14:00–16:00 UTC; your job's 167 h limit would overlap"
    );
}

#[test]
fn a_held_job_is_looked_at_again_when_the_occurrence_starts_or_ends_and_not_before() {
    // Bob's job with no limit waits before lab-b and during it; alice's 3 h job waits before it.
    // At 14:00 alice may start; at 16:00 (one-off) bob may: the pass needs no look in between.
    let before = lab_b(LAB_START - HOUR, false, 1);
    assert_eq!(before.next_change(), Some(LAB_START));
    let plan = run(&[job(1, "alice", 1, Some(3.0)), job(2, "bob", 2, None)], &[slot("gpu0")], &before);
    assert!(plan.assignments.is_empty(), "both held: {plan:?}");
    let during = lab_b(LAB_START + HOUR, false, 1);
    assert_eq!(during.next_change(), Some(LAB_START + 2.0 * HOUR));
    assert_eq!(run(&[job(1, "alice", 1, Some(3.0))], &[slot("gpu0")], &during).assignments, [(1, "gpu0")]);
    let after = lab_b(LAB_START + 2.0 * HOUR, false, 1);
    assert_eq!(after.next_change(), None, "a one-off reservation that ended changes nothing more");
    assert_eq!(run(&[job(2, "bob", 2, None)], &[slot("gpu0")], &after).assignments, [(2, "gpu0")]);
    // A weekly one next changes when next week's starts.
    assert_eq!(lab_b(LAB_START + 2.0 * HOUR, true, 1).next_change(), Some(LAB_START + WEEK_SECONDS));
    assert_eq!(Reservations::<&str>::default().next_change(), None);
}

/// A random box: slots, each with up to two reservation spans around `now`, and a queue.
#[derive(Debug, Clone)]
struct Case {
    queued: Vec<Candidate<u32, u8>>,
    devices: Vec<DeviceState<u8, u8>>,
    reservations: Reservations<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    let now = 1_000_000.0;
    (1..=4usize).prop_flat_map(move |device_count| {
        let devices = vec(proptest::bool::weighted(0.2), device_count).prop_map(|busy| {
            busy.into_iter()
                .enumerate()
                .map(|(id, busy)| DeviceState {
                    id: id as u8,
                    capacity: Capacity::Slot,
                    running: if busy {
                        vec![Running { user: 9, memory_bytes: 0, limit_left_seconds: None }]
                    } else {
                        Vec::new()
                    },
                    foreign_busy: false,
                })
                .collect::<Vec<_>>()
        });
        // Spans that began up to 5 h ago or begin within 10 h, 1 to 4 h long, for some of users 0..3.
        let span = (-5.0..10.0f64, 1.0..4.0f64, vec(0..3u8, 0..=2)).prop_map(move |(offset, hours, users)| {
            let start = now + offset * HOUR;
            ReservedSpan {
                device_label: String::from("a device"),
                name: String::from("lab"),
                occurrence: Occurrence { start, end: start + hours * HOUR },
                users,
            }
        });
        let reservations = vec(vec(span, 0..=2), device_count).prop_map(move |by_device| Reservations {
            now,
            by_device: by_device
                .into_iter()
                // The scheduler hands over only occurrences under way or to come.
                .map(|spans| spans.into_iter().filter(|span| span.occurrence.end > now).collect())
                .collect(),
        });
        let limit = proptest::option::weighted(0.8, 0.25..12.0f64);
        let queued = vec((0..3u8, limit), 0..=12).prop_map(|jobs| {
            (0..)
                .zip(jobs)
                .map(|(job, (user, limit_hours))| Candidate {
                    job,
                    user,
                    priority: 0,
                    seq: i64::from(job),
                    memory_bytes: 0,
                    limit_seconds: limit_hours.map(|hours| hours * HOUR),
                })
                .collect::<Vec<_>>()
        });
        (queued, devices, reservations).prop_map(|(queued, devices, reservations)| Case {
            queued,
            devices,
            reservations,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the box, the queue and the reservations: each job is placed or waits, once; and
    /// a job placed on a device with a reservation's occurrence under way at `now` belongs to
    /// one of its users, and a job placed on a device with an occurrence still to come has a
    /// time limit that ends by that occurrence's start (`now + limit <= start`). Every job
    /// waiting for a reservation names one that really keeps it off that device.
    #[test]
    fn no_job_is_placed_where_a_reservation_forbids_it(case in case()) {
        let Case { queued, devices, reservations } = case;
        let plan = plan_within(&queued, &devices, &HashMap::new(), &SHARED, &Budgets::default(), &reservations);
        let mut seen: Vec<u32> = plan.assignments.iter().map(|(job, _)| *job).chain(plan.waiting.iter().map(|waiting| waiting.job)).collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..queued.len() as u32).collect::<Vec<_>>());
        let now = reservations.now;
        for (job, device) in &plan.assignments {
            let candidate = &queued[*job as usize];
            for span in &reservations.by_device[usize::from(*device)] {
                if span.occurrence.is_current(now) {
                    prop_assert!(span.users.contains(&candidate.user), "job {} of user {} on {} during {:?}", job, candidate.user, device, span);
                } else {
                    let limit = candidate.limit_seconds;
                    prop_assert!(limit.is_some_and(|limit| now + limit <= span.occurrence.start), "job {} ({:?} s) on {} before {:?}", job, limit, device, span);
                }
            }
        }
        for waiting in &plan.waiting {
            if let PendingReason::Reserved(hold) = &waiting.reason {
                let candidate = &queued[waiting.job as usize];
                let kept_off = (0..devices.len()).any(|device| {
                    reservations.hold(device, &candidate.user, candidate.limit_seconds).as_ref() == Some(&**hold)
                });
                prop_assert!(kept_off, "job {} waits for {:?}, which keeps it off nothing", waiting.job, hold);
            }
        }
    }
}
