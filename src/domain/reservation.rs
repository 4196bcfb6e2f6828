//! Lab reservations: devices kept for a list of users from a start to an end, once or every week
//! (a TA's Tuesday lab). Pure: parsing an admin's request, the current or next occurrence at a
//! moment, overlaps between two reservations, and the wording students read.
//!
//! **The planner's rule** (`scheduler::policy`): during an occurrence only its users' jobs start on
//! its devices; before it begins, a job starts on one of them only if its time limit ends by the
//! occurrence's start. A job without a time limit could run into any occurrence, so it never
//! starts on a device whose next occurrence is known (every device of a weekly reservation, and
//! those of a one-off reservation until it ends).

use super::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Seconds in a week: the period of a weekly reservation.
pub const WEEK_SECONDS: f64 = 7.0 * 86_400.0;

/// A reservation as stored and planned with: checked by [`Reservation::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    /// Its name, unique (`lab-b`): what `DELETE /api/admin/reservations/{name}` names.
    pub name: String,
    /// The inventory ids of the devices it keeps (`gpu0`, `cpu1`: as `GET /api/devices` shows them).
    pub devices: Vec<String>,
    /// When its (first) occurrence begins.
    #[serde(with = "super::timestamp::rfc3339")]
    #[schema(value_type = String)]
    pub start: Timestamp,
    /// When its (first) occurrence ends.
    #[serde(with = "super::timestamp::rfc3339")]
    #[schema(value_type = String)]
    pub end: Timestamp,
    /// Whether it repeats every week from `start`.
    pub weekly: bool,
    /// The users whose jobs may start on its devices during it.
    pub users: Vec<String>,
}

/// What an admin sends to create a reservation (`POST /api/admin/reservations`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// 1–32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit.
    #[schema(example = "lab-b")]
    pub name: String,
    /// Inventory ids of the devices it keeps, as `GET /api/devices` shows them.
    #[schema(example = json!(["gpu0"]))]
    pub devices: Vec<String>,
    /// RFC 3339 (`2026-12-08T14:00:00Z`).
    #[schema(example = "2026-12-08T14:00:00Z")]
    pub start: String,
    /// RFC 3339, after `start` (and at most a week after it when `weekly`).
    #[schema(example = "2026-12-08T16:00:00Z")]
    pub end: String,
    /// Repeat every week from `start`.
    #[serde(default)]
    pub weekly: bool,
    /// The users it is for (their names).
    #[schema(example = json!(["alice", "bob"]))]
    pub users: Vec<String>,
}

/// Why a reservation request is refused: the field and what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ReservationError {
    /// The request's field at fault.
    pub field: &'static str,
    /// What is wrong and what to send instead.
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> ReservationError {
    ReservationError { field, message: message.into() }
}

/// One occurrence of a reservation: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occurrence {
    /// Its beginning, Unix seconds.
    pub start: f64,
    /// Its end (exclusive), Unix seconds.
    pub end: f64,
}

impl Occurrence {
    /// Whether it is under way at `now`.
    pub fn is_current(self, now: f64) -> bool {
        self.start <= now && now < self.end
    }

    /// Whether it and `other` share a moment.
    pub fn overlaps(self, other: Occurrence) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl Reservation {
    /// Checks an admin's request whole: the name like a user's, at least one device and one
    /// user, each known (`is_device`, `is_user`), an RFC 3339 start before the end, a weekly one at
    /// most a week long, a one-off one not over by `now`.
    pub fn parse(
        request: ReservationRequest,
        now: Timestamp,
        is_device: impl Fn(&str) -> bool,
        is_user: impl Fn(&str) -> bool,
    ) -> Result<Reservation, ReservationError> {
        super::user::check_name(&request.name)
            .map_err(|message| refuse("name", message.replace("user name", "reservation name")))?;
        if request.devices.is_empty() {
            return Err(refuse("devices", "name at least one device, as GET /api/devices shows them (`gpu0`)"));
        }
        if let Some(unknown) = request.devices.iter().find(|device| !is_device(device)) {
            return Err(refuse(
                "devices",
                format!("no device `{unknown}` on this server; name devices as GET /api/devices shows them (`gpu0`)"),
            ));
        }
        if request.users.is_empty() {
            return Err(refuse("users", "name at least one user the reservation is for"));
        }
        if let Some(unknown) = request.users.iter().find(|user| !is_user(user)) {
            return Err(refuse("users", format!("no user `{unknown}`; name users as `trainq admin users` lists them")));
        }
        let time = |field: &'static str, text: &str| {
            Timestamp::parse_rfc3339(text.trim()).map_err(|err| {
                refuse(field, format!("{err}; write a time such as 2026-12-08T14:00:00Z or 2026-12-08T15:00:00+01:00"))
            })
        };
        let (start, end) = (time("start", &request.start)?, time("end", &request.end)?);
        let length = end.seconds_since(start);
        if length <= 0.0 {
            return Err(refuse(
                "end",
                format!(
                    "`{}` is not after the start `{}`; a reservation must last some time",
                    request.end, request.start
                ),
            ));
        }
        if request.weekly && length > WEEK_SECONDS {
            return Err(refuse("end", "a weekly reservation lasts at most a week, or it would overlap itself"));
        }
        if !request.weekly && end <= now {
            return Err(refuse(
                "end",
                format!("`{}` is in the past; a reservation must end in the future", request.end),
            ));
        }
        let mut devices = request.devices;
        devices.sort();
        devices.dedup();
        let mut users = request.users;
        users.sort();
        users.dedup();
        Ok(Reservation { name: request.name, devices, start, end, weekly: request.weekly, users })
    }

    fn first(&self) -> Occurrence {
        Occurrence { start: self.start.unix_seconds(), end: self.end.unix_seconds() }
    }

    /// The occurrence under way at `now`, else the next one; `None` once a one-off one has ended.
    pub fn occurrence_at(&self, now: f64) -> Option<Occurrence> {
        let first = self.first();
        if !self.weekly || now < first.start {
            return (now < first.end).then_some(first);
        }
        let weeks = ((now - first.start) / WEEK_SECONDS).floor();
        let shifted = |weeks: f64| Occurrence {
            start: first.start + weeks * WEEK_SECONDS,
            end: first.end + weeks * WEEK_SECONDS,
        };
        let this_week = shifted(weeks);
        Some(if now < this_week.end { this_week } else { shifted(weeks + 1.0) })
    }

    /// Whether it keeps `device`.
    pub fn keeps(&self, device: &str) -> bool {
        self.devices.iter().any(|kept| kept == device)
    }

    /// Whether it is for `user`.
    pub fn is_for(&self, user: &str) -> bool {
        self.users.iter().any(|name| name == user)
    }

    /// Whether it and `other` keep a device in common at a common moment: one-off against
    /// one-off, weekly against one-off (the weekly one's first occurrence that ends after the
    /// one-off begins), weekly against weekly (their offsets within the week).
    pub fn overlaps(&self, other: &Reservation) -> bool {
        if !self.devices.iter().any(|device| other.keeps(device)) {
            return false;
        }
        match (self.weekly, other.weekly) {
            (false, false) => self.first().overlaps(other.first()),
            (true, false) => self.occurrence_at(other.first().start).is_some_and(|at| at.overlaps(other.first())),
            (false, true) => other.overlaps(self),
            (true, true) => {
                // Both repeat for ever, so they meet where their places in the week meet.
                let (a, b) = (self.first(), other.first());
                let offset = (b.start - a.start).rem_euclid(WEEK_SECONDS);
                offset < a.end - a.start || offset + (b.end - b.start) > WEEK_SECONDS
            }
        }
    }
}

/// The first of `existing` that `new` overlaps on a shared device, if any.
pub fn first_overlap<'a>(new: &Reservation, existing: &'a [Reservation]) -> Option<&'a Reservation> {
    existing.iter().find(|other| other.name != new.name && new.overlaps(other))
}

/// A reservation's occurrence on one device as the devices panel shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upcoming {
    /// The reservation's name.
    pub name: String,
    /// Its occurrence under way, else its next one: start and end.
    #[serde(with = "super::timestamp::rfc3339")]
    pub start: Timestamp,
    /// When that occurrence ends.
    #[serde(with = "super::timestamp::rfc3339")]
    pub end: Timestamp,
    /// Under way now.
    pub under_way: bool,
    /// It repeats every week.
    pub weekly: bool,
    /// Who it is for.
    pub users: Vec<String>,
    /// The occurrence as students read it (`Tue 8 Dec 14:00–16:00 UTC`).
    pub when: String,
}

/// The reservations of `all` that keep `device`, each by its occurrence under way at `now` or
/// its next one, soonest first; those that are over are left out.
pub fn upcoming(all: &[Reservation], device: &str, now: f64) -> Vec<Upcoming> {
    let mut shown: Vec<Upcoming> = all
        .iter()
        .filter(|reservation| reservation.keeps(device))
        .filter_map(|reservation| {
            let occurrence = reservation.occurrence_at(now)?;
            let time = |seconds: f64| Timestamp::from_unix_seconds(seconds).ok();
            Some(Upcoming {
                name: reservation.name.clone(),
                start: time(occurrence.start)?,
                end: time(occurrence.end)?,
                under_way: occurrence.is_current(now),
                weekly: reservation.weekly,
                users: reservation.users.clone(),
                when: When(occurrence).to_string(),
            })
        })
        .collect();
    shown.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.name.cmp(&b.name)));
    shown
}

/// A device's inventory id as students read it: `gpu0` is "GPU 0", `cpu1` "CPU slot 1", `slurm2`
/// "Slurm slot 2"; any other id as it is.
pub fn device_label(id: &str) -> String {
    let digits = id.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let kind = &id[..id.len() - digits.len()];
    match kind {
        "gpu" if !digits.is_empty() => format!("GPU {digits}"),
        "cpu" if !digits.is_empty() => format!("CPU slot {digits}"),
        "slurm" if !digits.is_empty() => format!("Slurm slot {digits}"),
        _ => id.to_string(),
    }
}

/// An occurrence as students read it, in UTC: `Tue 8 Dec 14:00–16:00 UTC`, or with both days
/// when it spans midnight (`Tue 8 Dec 22:00 – Wed 9 Dec 02:00 UTC`).
pub struct When(pub Occurrence);

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |seconds: f64| {
            time::OffsetDateTime::from_unix_timestamp(seconds.round() as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        let (start, end) = (at(self.0.start), at(self.0.end));
        let day = |at: time::OffsetDateTime| {
            let weekday = at.weekday().to_string();
            let month = at.month().to_string();
            format!("{} {} {}", &weekday[..3], at.day(), &month[..3])
        };
        let clock = |at: time::OffsetDateTime| format!("{:02}:{:02}", at.hour(), at.minute());
        if start.date() == end.date() {
            write!(f, "{} {}–{} UTC", day(start), clock(start), clock(end))
        } else {
            write!(f, "{} {} – {} {} UTC", day(start), clock(start), day(end), clock(end))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tuesday 8 December 2026, 14:00 UTC.
    const TUESDAY_2PM: f64 = 1_796_738_400.0;
    const HOUR: f64 = 3600.0;

    fn at(seconds: f64) -> Timestamp {
        Timestamp::from_unix_seconds(seconds).unwrap()
    }

    fn reservation(name: &str, devices: &[&str], start: f64, end: f64, weekly: bool) -> Reservation {
        Reservation {
            name: name.to_string(),
            devices: devices.iter().map(|device| device.to_string()).collect(),
            start: at(start),
            end: at(end),
            weekly,
            users: vec![String::from("alice")],
        }
    }

    fn request(start: &str, end: &str, weekly: bool) -> ReservationRequest {
        ReservationRequest {
            name: String::from("lab-b"),
            devices: vec![String::from("gpu0")],
            start: start.to_string(),
            end: end.to_string(),
            weekly,
            users: vec![String::from("alice")],
        }
    }

    fn parse(request: ReservationRequest, now: f64) -> Result<Reservation, ReservationError> {
        Reservation::parse(request, at(now), |device| device == "gpu0" || device == "gpu1", |user| user == "alice")
    }

    #[test]
    fn the_clock_constant_is_a_tuesday_afternoon() {
        assert_eq!(at(TUESDAY_2PM).to_rfc3339(), "2026-12-08T14:00:00Z");
    }

    #[test]
    fn a_good_request_parses_and_each_bad_field_is_named() {
        let good = parse(request("2026-12-08T14:00:00Z", "2026-12-08T17:00:00+01:00", true), TUESDAY_2PM).unwrap();
        assert_eq!((good.start.unix_seconds(), good.end.unix_seconds()), (TUESDAY_2PM, TUESDAY_2PM + 2.0 * HOUR));
        let field = |request: ReservationRequest, now: f64| parse(request, now).unwrap_err().field;
        let base = || request("2026-12-08T14:00:00Z", "2026-12-08T16:00:00Z", false);
        assert_eq!(field(ReservationRequest { name: String::from("Lab B"), ..base() }, 0.0), "name");
        assert_eq!(field(ReservationRequest { devices: vec![], ..base() }, 0.0), "devices");
        assert_eq!(field(ReservationRequest { devices: vec![String::from("gpu7")], ..base() }, 0.0), "devices");
        assert_eq!(field(ReservationRequest { users: vec![], ..base() }, 0.0), "users");
        assert_eq!(field(ReservationRequest { users: vec![String::from("mallory")], ..base() }, 0.0), "users");
        assert_eq!(field(request("tuesday", "2026-12-08T16:00:00Z", false), 0.0), "start");
        assert_eq!(field(request("2026-12-08T14:00:00Z", "4pm", false), 0.0), "end");
        assert_eq!(field(request("2026-12-08T14:00:00Z", "2026-12-08T14:00:00Z", false), 0.0), "end", "0 seconds");
        assert_eq!(field(request("2026-12-08T14:00:00Z", "2026-12-08T13:00:00Z", false), 0.0), "end", "backwards");
        assert_eq!(field(request("2026-12-08T14:00:00Z", "2026-12-16T14:00:00Z", true), 0.0), "end", "over a week");
        // In the past: a one-off that has ended is refused; a weekly one still recurs.
        assert_eq!(field(base(), TUESDAY_2PM + 2.0 * HOUR), "end");
        assert!(parse(request("2026-12-08T14:00:00Z", "2026-12-08T16:00:00Z", true), TUESDAY_2PM + 9.0 * HOUR).is_ok());
        let message = parse(ReservationRequest { users: vec![String::from("mallory")], ..base() }, 0.0).unwrap_err();
        assert!(message.message.contains("`mallory`"), "{message}");
    }

    #[test]
    fn a_one_off_occurs_until_it_ends() {
        let lab = reservation("lab", &["gpu0"], TUESDAY_2PM, TUESDAY_2PM + 2.0 * HOUR, false);
        let once = Occurrence { start: TUESDAY_2PM, end: TUESDAY_2PM + 2.0 * HOUR };
        assert_eq!(lab.occurrence_at(TUESDAY_2PM - 100.0 * HOUR), Some(once), "next");
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + HOUR), Some(once), "current");
        assert!(once.is_current(TUESDAY_2PM) && !once.is_current(TUESDAY_2PM + 2.0 * HOUR), "[start, end)");
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + 2.0 * HOUR), None, "over");
    }

    #[test]
    fn a_weekly_one_occurs_every_week_and_wraps_to_the_next() {
        let lab = reservation("lab", &["gpu0"], TUESDAY_2PM, TUESDAY_2PM + 2.0 * HOUR, true);
        let week = |n: f64| Occurrence {
            start: TUESDAY_2PM + n * WEEK_SECONDS,
            end: TUESDAY_2PM + 2.0 * HOUR + n * WEEK_SECONDS,
        };
        assert_eq!(lab.occurrence_at(TUESDAY_2PM - HOUR), Some(week(0.0)));
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + HOUR), Some(week(0.0)));
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + 2.0 * HOUR), Some(week(1.0)), "its end moves to next week");
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + 3.0 * WEEK_SECONDS + HOUR), Some(week(3.0)));
        assert_eq!(lab.occurrence_at(TUESDAY_2PM + 3.0 * WEEK_SECONDS - HOUR), Some(week(3.0)));
        // One that spans Sunday midnight into Monday wraps across the week's boundary.
        let sunday_night = TUESDAY_2PM + 5.0 * 86_400.0 + 8.0 * HOUR;
        let late = reservation("late", &["gpu0"], sunday_night, sunday_night + 4.0 * HOUR, true);
        let at = late.occurrence_at(sunday_night + WEEK_SECONDS + 3.0 * HOUR).unwrap();
        assert!(at.is_current(sunday_night + WEEK_SECONDS + 3.0 * HOUR));
    }

    #[test]
    fn overlaps_need_a_shared_device_and_a_shared_moment() {
        let one_off =
            |devices: &[&str], start: f64, hours: f64| reservation("a", devices, start, start + hours * HOUR, false);
        let weekly =
            |devices: &[&str], start: f64, hours: f64| reservation("w", devices, start, start + hours * HOUR, true);
        let lab = one_off(&["gpu0", "gpu1"], TUESDAY_2PM, 2.0);
        assert!(lab.overlaps(&one_off(&["gpu1"], TUESDAY_2PM + HOUR, 2.0)));
        assert!(!lab.overlaps(&one_off(&["gpu2"], TUESDAY_2PM + HOUR, 2.0)), "no shared device");
        assert!(!lab.overlaps(&one_off(&["gpu0"], TUESDAY_2PM + 2.0 * HOUR, 2.0)), "back to back");
        // Weekly against one-off: weeks later, and never before the weekly one begins.
        let tuesdays = weekly(&["gpu0"], TUESDAY_2PM, 2.0);
        assert!(tuesdays.overlaps(&one_off(&["gpu0"], TUESDAY_2PM + 5.0 * WEEK_SECONDS + HOUR, 0.5)));
        assert!(one_off(&["gpu0"], TUESDAY_2PM + 5.0 * WEEK_SECONDS + HOUR, 0.5).overlaps(&tuesdays));
        assert!(!tuesdays.overlaps(&one_off(&["gpu0"], TUESDAY_2PM + 5.0 * WEEK_SECONDS + 3.0 * HOUR, 1.0)));
        assert!(!tuesdays.overlaps(&one_off(&["gpu0"], TUESDAY_2PM - WEEK_SECONDS, 2.0)), "a week before it begins");
        assert!(tuesdays.overlaps(&one_off(&["gpu0"], TUESDAY_2PM - HOUR, 30.0 * 24.0)), "a long one-off");
        // Weekly against weekly: by their places in the week, whichever began first.
        assert!(tuesdays.overlaps(&weekly(&["gpu0"], TUESDAY_2PM + 9.0 * WEEK_SECONDS + HOUR, 2.0)));
        assert!(tuesdays.overlaps(&weekly(&["gpu0"], TUESDAY_2PM - 9.0 * WEEK_SECONDS - HOUR, 2.0)));
        assert!(!tuesdays.overlaps(&weekly(&["gpu0"], TUESDAY_2PM + 2.0 * HOUR, 2.0)), "right after");
        assert!(!tuesdays.overlaps(&weekly(&["gpu0"], TUESDAY_2PM + 86_400.0, 2.0)), "Wednesdays");
        // Wrapping the week: Monday 23:00 for 16 h reaches into Tuesday 15:00.
        let monday_night = TUESDAY_2PM - 15.0 * HOUR;
        assert!(tuesdays.overlaps(&weekly(&["gpu0"], monday_night, 16.0)));
        assert!(!tuesdays.overlaps(&weekly(&["gpu0"], monday_night, 15.0)));
        // A whole-week reservation overlaps every other on its device.
        assert!(tuesdays.overlaps(&weekly(&["gpu0"], TUESDAY_2PM + 3.0 * 86_400.0, 7.0 * 24.0)));
        // first_overlap skips the reservation itself (by name).
        let existing = [tuesdays.clone(), lab.clone()];
        let mut renamed = one_off(&["gpu1"], TUESDAY_2PM, 1.0);
        assert_eq!(first_overlap(&renamed, &existing).map(|r| r.name.as_str()), None, "its own old row");
        renamed.name = String::from("new");
        assert_eq!(first_overlap(&renamed, &existing).map(|r| r.name.as_str()), Some("a"));
    }

    #[test]
    fn devices_read_as_students_know_them() {
        assert_eq!(device_label("gpu0"), "GPU 0");
        assert_eq!(device_label("cpu12"), "CPU slot 12");
        assert_eq!(device_label("slurm1"), "Slurm slot 1");
        assert_eq!(device_label("gpu"), "gpu");
    }

    #[test]
    fn occurrences_read_as_a_day_and_hours() {
        let when = When(Occurrence { start: TUESDAY_2PM, end: TUESDAY_2PM + 2.0 * HOUR });
        assert_eq!(when.to_string(), "Tue 8 Dec 14:00–16:00 UTC");
        let night = When(Occurrence { start: TUESDAY_2PM + 8.0 * HOUR, end: TUESDAY_2PM + 12.0 * HOUR });
        assert_eq!(night.to_string(), "Tue 8 Dec 22:00 – Wed 9 Dec 02:00 UTC");
    }
}
