//! One type for a moment in time: [`Timestamp`], used by `Job`, the API's views, the scheduler's
//! ETAs, retention's cutoffs and the report.
//!
//! trainq has two encodings of time, and both are public (the database and the JSON API):
//! - RFC 3339 text in UTC with a `Z`, nanoseconds with trailing zeros trimmed and left out when
//!   zero (`2026-12-01T14:00:00.5Z`), as the `time` crate writes it: `submitted_at`,
//!   `started_at`, `finished_at` (TEXT columns, JSON strings), and retention's `cutoff`;
//! - Unix seconds as an `f64`: `deleted_at`, `pruned_at` (REAL columns, JSON numbers) and the
//!   queue's `eta_at`.
//!
//! The type holds a `time::OffsetDateTime` in UTC, which has nanosecond resolution, so that both
//! encodings survive a trip through it bit for bit:
//! - text → `Timestamp` → text is identical for every text trainq writes, since the text carries
//!   nanoseconds at most and is already in the canonical form [`Timestamp::to_rfc3339`] writes.
//!   (Unix seconds could not do this: an `f64` near 1.8e9 resolves only about 240 ns.)
//! - seconds → `Timestamp` → seconds is identical for every `f64` from 2^23 seconds (April 1970)
//!   on, and for any value whose fraction is a whole number of nanoseconds: the fraction is
//!   rounded to the nearest nanosecond (off by at most 0.5 ns), and from 2^23 on neighbouring
//!   `f64`s are more than 1.8 ns apart, so converting back lands on the same `f64`. Every
//!   stored REAL time was read from the clock in this century.
//!
//! Which encoding a field uses is a property of the field, not of the type, so `Timestamp` has no
//! `Serialize` of its own: each field names its encoding with `#[serde(with = ...)]`
//! ([`rfc3339`], [`rfc3339::option`], [`unix_seconds::option`]) and tells the OpenAPI document
//! what it is with `#[schema(value_type = String)]` or `#[schema(value_type = Option<f64>)]`,
//! so the document says exactly what it said when the fields were `String` and `f64`.
//! The store decodes the columns into `Timestamp` when it reads a row and encodes them back
//! when it writes one (`store::jobs`), which keeps the SQL that compares RFC 3339 texts (gc's
//! `ended_before`) right.

use std::fmt;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A moment in time, in UTC, to the nanosecond. Ordered by time (unlike RFC 3339 texts, where
/// `…:00.5Z` sorts before `…:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Why a text or a number is no time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampError {
    /// The text is not RFC 3339.
    #[error("`{text}` is no RFC 3339 time: {reason}")]
    NotRfc3339 {
        /// The text given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// The number is not finite, or beyond the years the `time` crate knows (±9999).
    #[error("{0} is no time in Unix seconds")]
    OutOfRange(f64),
}

impl Timestamp {
    /// The current time, from the system clock.
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Reads RFC 3339 text, as the `jobs` table stores it; a time with another offset is moved
    /// to UTC.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|at| Timestamp(at.to_offset(UtcOffset::UTC)))
            .map_err(|err| TimestampError::NotRfc3339 { text: text.to_string(), reason: err.to_string() })
    }

    /// The RFC 3339 text trainq stores and sends: UTC with a `Z`, and only as many fractional
    /// digits as the nanoseconds need (`2026-12-01T14:00:00.5Z`, `2026-12-01T14:00:00Z`). Texts
    /// of the same length compare as their times do, which the SQL that compares them relies on.
    pub fn to_rfc3339(self) -> String {
        self.0.format(&Rfc3339).expect("a UTC time between the years 0 and 9999 formats as RFC 3339")
    }

    /// The time `seconds` after the Unix epoch, as the REAL columns store it. The fraction is
    /// rounded to the nearest nanosecond (see the module docs for why that loses nothing).
    pub fn from_unix_seconds(seconds: f64) -> Result<Timestamp, TimestampError> {
        if !seconds.is_finite() {
            return Err(TimestampError::OutOfRange(seconds));
        }
        let whole = seconds.floor();
        // Exact: a finite f64 minus its floor is representable.
        let fraction = seconds - whole;
        let mut nanoseconds = (fraction * 1e9).round() as u32;
        let mut whole = whole as i64;
        if nanoseconds == 1_000_000_000 {
            whole += 1;
            nanoseconds = 0;
        }
        OffsetDateTime::from_unix_timestamp(whole)
            .and_then(|at| at.replace_nanosecond(nanoseconds))
            .map(Timestamp)
            .map_err(|_| TimestampError::OutOfRange(seconds))
    }

    /// Seconds since the Unix epoch, as the REAL columns store it and the API sends `deleted_at`,
    /// `pruned_at` and `eta_at`. Whole seconds and the fraction are added last, so the result is
    /// the `f64` nearest the time (as `std::time::Duration::as_secs_f64` computes it).
    pub fn unix_seconds(self) -> f64 {
        self.0.unix_timestamp() as f64 + f64::from(self.0.nanosecond()) / 1e9
    }

    /// Seconds from `earlier` to this time; negative if `earlier` is later. What waits, ages and
    /// report durations are measured with.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0).as_seconds_f64()
    }

    /// The time `seconds` later (earlier if negative), as an ETA is a start time estimated from
    /// seconds of work ahead. Saturates at the years the `time` crate knows.
    pub fn plus_seconds(self, seconds: f64) -> Timestamp {
        let offset = time::Duration::checked_seconds_f64(seconds).unwrap_or(if seconds < 0.0 {
            time::Duration::MIN
        } else {
            time::Duration::MAX
        });
        Timestamp(self.0.saturating_add(offset))
    }

    /// The time `age` before this one, as retention's cutoff is "ended more than `age` ago".
    pub fn minus(self, age: Duration) -> Timestamp {
        Timestamp(self.0 - age)
    }

    /// Date and time to the second for people, `2026-12-01 14:00:00 UTC`, as the report prints
    /// when an experiment was submitted, started and finished.
    pub fn to_readable_utc(self) -> String {
        let at = self.0;
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    }
}

impl fmt::Display for Timestamp {
    /// The RFC 3339 text, as stored.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A field sent and read as RFC 3339 text: `#[serde(with = "crate::domain::timestamp::rfc3339")]`
/// with `#[schema(value_type = String)]`.
pub mod rfc3339 {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the time as [`Timestamp::to_rfc3339`] text.
    pub fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        at.to_rfc3339().serialize(serializer)
    }

    /// Reads RFC 3339 text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }

    /// An optional field sent as RFC 3339 text or `null`: `#[serde(with =
    /// "crate::domain::timestamp::rfc3339::option")]` with `#[schema(value_type = Option<String>)]`.
    pub mod option {
        use super::Timestamp;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes the time as RFC 3339 text, or `null`.
        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
            at.map(Timestamp::to_rfc3339).serialize(serializer)
        }

        /// Reads RFC 3339 text or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// A field sent and read as Unix seconds, a JSON number: `#[serde(with =
/// "crate::domain::timestamp::unix_seconds")]` with `#[schema(value_type = f64)]`.
pub mod unix_seconds {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes [`Timestamp::unix_seconds`].
    pub fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        at.unix_seconds().serialize(serializer)
    }

    /// Reads Unix seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        Timestamp::from_unix_seconds(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }

    /// An optional field sent as Unix seconds or `null`: `#[serde(with =
    /// "crate::domain::timestamp::unix_seconds::option")]` with `#[schema(value_type = Option<f64>)]`.
    pub mod option {
        use super::super::Timestamp;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes [`Timestamp::unix_seconds`], or `null`.
        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
            at.map(Timestamp::unix_seconds).serialize(serializer)
        }

        /// Reads Unix seconds or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<f64>::deserialize(deserializer)?
                .map(|seconds| Timestamp::from_unix_seconds(seconds).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stored_texts_read_back_as_unix_seconds() {
        let at = Timestamp::parse_rfc3339("2026-12-01T14:00:00.5Z").unwrap();
        assert_eq!(at.unix_seconds(), 1_796_133_600.5);
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((Timestamp::now().unix_seconds() - clock).abs() < 5.0);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn texts_as_trainq_writes_them_survive_a_round_trip() {
        for text in [
            "2026-12-01T14:00:00Z",
            "2026-12-01T14:00:00.5Z",
            "2026-12-07T02:21:57.123456789Z",
            "2026-12-07T02:21:57.12345678Z",
            "2026-12-07T02:21:57.000000001Z",
            "1999-12-31T23:59:59.9Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(text).unwrap().to_rfc3339(), text);
        }
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse_rfc3339(&now.to_rfc3339()).unwrap(), now, "nanoseconds and all");
        // Another offset is the same moment, written back in UTC.
        let moved = Timestamp::parse_rfc3339("2026-12-01T15:00:00.5+01:00").unwrap();
        assert_eq!(moved.to_rfc3339(), "2026-12-01T14:00:00.5Z");
    }

    #[test]
    fn seconds_as_the_clock_gives_them_survive_a_round_trip() {
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        for seconds in [clock, 0.0, 1.0, 1_796_133_600.5, 1_796_133_600.123_456_7, 8_388_608.1, -86_400.25] {
            assert_eq!(Timestamp::from_unix_seconds(seconds).unwrap().unix_seconds().to_bits(), seconds.to_bits());
        }
        // What the store writes to a REAL column reads back as the same number.
        let written = Timestamp::now().unix_seconds();
        assert_eq!(Timestamp::from_unix_seconds(written).unwrap().unix_seconds().to_bits(), written.to_bits());
        assert!(Timestamp::from_unix_seconds(f64::NAN).is_err());
        assert!(Timestamp::from_unix_seconds(f64::INFINITY).is_err());
        assert!(Timestamp::from_unix_seconds(1e300).is_err());
    }

    proptest! {
        /// Every f64 from April 1970 to the year 2514 comes back bit for bit.
        #[test]
        fn any_seconds_after_april_1970_survive_a_round_trip(seconds in 8_388_608.0f64..17_179_869_184.0) {
            let back = Timestamp::from_unix_seconds(seconds).unwrap().unix_seconds();
            prop_assert_eq!(back.to_bits(), seconds.to_bits(), "{} came back as {}", seconds, back);
        }

        /// Every nanosecond time comes back as the same text.
        #[test]
        fn any_nanosecond_text_survives_a_round_trip(seconds in 0i64..253_402_300_799, nanoseconds in 0u32..1_000_000_000) {
            let at = Timestamp(OffsetDateTime::from_unix_timestamp(seconds).unwrap().replace_nanosecond(nanoseconds).unwrap());
            let text = at.to_rfc3339();
            prop_assert_eq!(Timestamp::parse_rfc3339(&text).unwrap().to_rfc3339(), text);
        }
    }

    #[test]
    fn times_order_by_time_not_by_text() {
        let whole = Timestamp::parse_rfc3339("2026-12-01T14:00:00Z").unwrap();
        let half = Timestamp::parse_rfc3339("2026-12-01T14:00:00.5Z").unwrap();
        assert!(whole < half, "as text, `…00.5Z` sorts first");
        assert_eq!(half.seconds_since(whole), 0.5);
        assert_eq!(whole.plus_seconds(0.5), half);
        assert_eq!(half.minus(Duration::from_millis(500)), whole);
        assert_eq!([half, whole].iter().min(), Some(&whole));
    }

    #[test]
    fn people_read_the_time_to_the_second() {
        let at = Timestamp::parse_rfc3339("2026-12-01T04:05:06.789Z").unwrap();
        assert_eq!(at.to_readable_utc(), "2026-12-01 04:05:06 UTC");
    }

    #[test]
    fn each_field_keeps_its_encoding_in_json() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Fields {
            #[serde(with = "rfc3339")]
            text: Timestamp,
            #[serde(with = "rfc3339::option")]
            maybe_text: Option<Timestamp>,
            #[serde(with = "unix_seconds::option")]
            seconds: Option<Timestamp>,
        }
        let json = r#"{"text":"2026-12-01T14:00:00.5Z","maybe_text":null,"seconds":1796133600.25}"#;
        let fields: Fields = serde_json::from_str(json).unwrap();
        assert_eq!(fields.seconds.unwrap().seconds_since(fields.text), -0.25);
        assert_eq!(serde_json::to_string(&fields).unwrap(), json);
    }
}
