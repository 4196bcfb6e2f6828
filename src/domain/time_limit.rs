//! A job's time limit: the device time it may use over all its runs before it is stopped with a
//! checkpoint and ends `timeout`. Written `"90m"`, `"4h"`, `"2d"`, `"45s"` or a whole number of
//! seconds (a JSON number or a string of digits), and shown compactly in the largest unit that
//! divides it ("2h", "90m"), so what a student typed comes back the way they wrote it.
//!
//! The type only holds sensible values: whole seconds, more than zero, at most
//! [`MAX_TIME_LIMIT_SECONDS`]. Which limits a server accepts is a separate, configurable ceiling
//! ([`TimeLimit::ceiling`]): `--max-time-limit`, or [`DEFAULT_CEILING_SECONDS`] when no cap is set.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Seconds in a minute, an hour and a day: the units a limit is written in.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// The longest limit a server accepts when the admin set no `--max-time-limit`: 30 days.
pub const DEFAULT_CEILING_SECONDS: u64 = 30 * 86_400;

/// The longest limit that makes sense at all (a year): beyond it a value is a typo, not a plan,
/// and even an admin's cap may not go past it.
pub const MAX_TIME_LIMIT_SECONDS: u64 = 365 * 86_400;

/// A time limit in whole seconds, more than zero and at most [`MAX_TIME_LIMIT_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeLimit(u64);

/// Why a text or number is not a time limit; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeLimitError {
    /// Zero seconds: a job could never run.
    #[error(
        "a time limit of zero would stop the job before it starts; give a positive duration such as \"90m\" or \"4h\""
    )]
    Zero,
    /// A negative duration.
    #[error("`{0}` is negative; give a positive duration such as \"90m\" or \"4h\"")]
    Negative(String),
    /// Not a number with an optional unit.
    #[error(
        "`{0}` is not a duration; write a number with s, m, h or d (\"45s\", \"90m\", \"4h\", \"2d\") or whole seconds"
    )]
    Unparsable(String),
    /// A number of seconds with a fraction.
    #[error("`{0}` is not a whole number of seconds; write whole seconds or use a unit (\"90m\")")]
    Fractional(String),
    /// Longer than any plan could mean.
    #[error("`{0}` is absurdly long; the most any limit may be is 365 days (\"365d\")")]
    Absurd(String),
}

impl TimeLimit {
    /// A limit of `seconds`, refused when zero or over a year.
    pub fn from_seconds(seconds: u64) -> Result<TimeLimit, TimeLimitError> {
        match seconds {
            0 => Err(TimeLimitError::Zero),
            seconds if seconds > MAX_TIME_LIMIT_SECONDS => Err(TimeLimitError::Absurd(seconds.to_string())),
            seconds => Ok(TimeLimit(seconds)),
        }
    }

    /// Reads `"90m"`, `"4h"`, `"2d"`, `"45s"` or `"5400"` (seconds); surrounding spaces are allowed.
    pub fn parse(text: &str) -> Result<TimeLimit, TimeLimitError> {
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(TimeLimitError::Negative(trimmed.to_string()));
        }
        let (number, unit_seconds) = match trimmed.char_indices().last() {
            Some((index, unit)) if unit.is_ascii_alphabetic() => {
                let seconds = UNITS
                    .iter()
                    .find(|(name, _)| *name == unit.to_ascii_lowercase())
                    .map(|(_, seconds)| *seconds)
                    .ok_or_else(|| TimeLimitError::Unparsable(trimmed.to_string()))?;
                (trimmed[..index].trim_end(), seconds)
            }
            _ => (trimmed, 1),
        };
        if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
            if unit_seconds == 1 && number.parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(TimeLimitError::Fractional(trimmed.to_string()));
            }
            return Err(TimeLimitError::Unparsable(trimmed.to_string()));
        }
        let seconds = number
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(unit_seconds))
            .ok_or_else(|| TimeLimitError::Absurd(trimmed.to_string()))?;
        match TimeLimit::from_seconds(seconds) {
            Err(TimeLimitError::Absurd(_)) => Err(TimeLimitError::Absurd(trimmed.to_string())),
            other => other,
        }
    }

    /// The limit in seconds.
    pub fn seconds(self) -> u64 {
        self.0
    }

    /// The limit as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// The longest limit a server with this `cap` (`--max-time-limit`) accepts: the cap, or 30
    /// days without one.
    pub fn ceiling(cap: Option<TimeLimit>) -> TimeLimit {
        cap.unwrap_or(TimeLimit(DEFAULT_CEILING_SECONDS))
    }

    /// Why this limit is refused by a server with `cap`, or `None` when it is accepted. The
    /// message names the ceiling and where it comes from, for the 422 of a submission.
    pub fn over_ceiling(self, cap: Option<TimeLimit>) -> Option<String> {
        let ceiling = TimeLimit::ceiling(cap);
        (self > ceiling).then(|| match cap {
            Some(_) => {
                format!("{self} is over this server's cap of {ceiling} (--max-time-limit); ask for {ceiling} or less")
            }
            None => format!("{self} is over the longest limit a job may have, {ceiling}; ask for {ceiling} or less"),
        })
    }
}

/// A server's time-limit settings: the limit a job without one gets (`--default-time-limit`) and
/// the longest one a job may ask for (`--max-time-limit`). Both absent: jobs have no limit unless
/// they ask for one, of at most 30 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeLimitPolicy {
    /// The limit of a job whose spec has none.
    pub default: Option<TimeLimit>,
    /// The longest limit a job may have.
    pub cap: Option<TimeLimit>,
}

impl TimeLimitPolicy {
    /// The settings, refused when the default is over the cap (or over 30 days without one):
    /// every job without a limit of its own would be refused.
    pub fn new(default: Option<TimeLimit>, cap: Option<TimeLimit>) -> Result<TimeLimitPolicy, String> {
        if let Some(message) = default.and_then(|limit| limit.over_ceiling(cap)) {
            return Err(format!("--default-time-limit {message}"));
        }
        Ok(TimeLimitPolicy { default, cap })
    }

    /// Why a spec's `time_limit` of `asked` is refused (over the cap, or over 30 days without
    /// one), for a 422 naming the field; `Ok` for no limit of its own (the default was checked at
    /// start).
    pub fn check(self, asked: Option<TimeLimit>) -> Result<(), String> {
        asked.and_then(|limit| limit.over_ceiling(self.cap)).map_or(Ok(()), Err)
    }

    /// The limit a job with `asked` in its spec runs under: its own, else the default.
    pub fn applied(self, asked: Option<TimeLimit>) -> Option<TimeLimit> {
        asked.or(self.default)
    }
}

/// Why a job stopped at its limit, where it stood: "time limit 2h reached at phase 2, epoch 37
/// of 50", or "… reached before training started" when no epoch had begun. The job's `error`
/// and the reason a student reads.
pub fn reached_reason(limit: TimeLimit, progress: Option<&crate::domain::JobProgress>) -> String {
    match progress.filter(|progress| progress.phase > 0 && progress.epoch > 0) {
        Some(progress) => format!(
            "time limit {limit} reached at phase {}, epoch {} of {}",
            progress.phase, progress.epoch, progress.epochs
        ),
        None => format!("time limit {limit} reached before training started"),
    }
}

impl fmt::Display for TimeLimit {
    /// The largest unit that divides the limit exactly: 7200 s is "2h", 5400 s is "90m".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, seconds) =
            UNITS.iter().find(|(_, seconds)| self.0.is_multiple_of(*seconds)).expect("seconds divide everything");
        write!(f, "{}{unit}", self.0 / seconds)
    }
}

impl FromStr for TimeLimit {
    type Err = TimeLimitError;
    fn from_str(text: &str) -> Result<TimeLimit, TimeLimitError> {
        TimeLimit::parse(text)
    }
}

impl Serialize for TimeLimit {
    /// As its compact text, so a spec read back says what was written ("4h", not 14400).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeLimit {
    /// From a text (`"4h"`, `"5400"`) or a JSON number of whole seconds.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TimeLimit, D::Error> {
        deserializer.deserialize_any(TimeLimitVisitor)
    }
}

/// Reads the three spellings serde may hand over: text, an integer, a float.
struct TimeLimitVisitor;

impl serde::de::Visitor<'_> for TimeLimitVisitor {
    type Value = TimeLimit;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a duration such as \"90m\", \"4h\", \"2d\", \"45s\" or whole seconds")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<TimeLimit, E> {
        TimeLimit::parse(text).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, seconds: u64) -> Result<TimeLimit, E> {
        TimeLimit::from_seconds(seconds).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, seconds: i64) -> Result<TimeLimit, E> {
        match u64::try_from(seconds) {
            Ok(seconds) => self.visit_u64(seconds),
            Err(_) => Err(E::custom(TimeLimitError::Negative(seconds.to_string()))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, seconds: f64) -> Result<TimeLimit, E> {
        let error = match seconds {
            _ if seconds < 0.0 => TimeLimitError::Negative(seconds.to_string()),
            _ if seconds.fract() != 0.0 || !seconds.is_finite() => TimeLimitError::Fractional(seconds.to_string()),
            _ if seconds > MAX_TIME_LIMIT_SECONDS as f64 => TimeLimitError::Absurd(seconds.to_string()),
            _ => return self.visit_u64(seconds as u64),
        };
        Err(E::custom(error))
    }
}

/// The pattern of a time limit's text in the OpenAPI document.
const TEXT_PATTERN: &str = "^\\s*[0-9]+\\s*[smhdSMHD]?\\s*$";

impl utoipa::PartialSchema for TimeLimit {
    /// A text with a unit or a whole number of seconds; answers always hold the text.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(TEXT_PATTERN)).examples(["4h"]))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(MAX_TIME_LIMIT_SECONDS as usize)),
            )
            .description(Some(
                "Device time the job may use over all its runs: \"45s\", \"90m\", \"4h\", \"2d\", or whole seconds. Answers write it in the largest unit that divides it (\"2h\").",
            ))
            .into()
    }
}

impl utoipa::ToSchema for TimeLimit {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_reads_as_whole_seconds() {
        for (text, seconds) in [
            ("90m", 5_400),
            ("4h", 14_400),
            ("2d", 172_800),
            ("45s", 45),
            ("5400", 5_400),
            (" 2 h ", 7_200),
            ("3H", 10_800),
            ("365d", MAX_TIME_LIMIT_SECONDS),
        ] {
            assert_eq!(TimeLimit::parse(text).map(TimeLimit::seconds), Ok(seconds), "{text}");
        }
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        type Expected = fn(&TimeLimitError) -> bool;
        let cases: [(&str, Expected); 11] = [
            ("0", |err| *err == TimeLimitError::Zero),
            ("0h", |err| *err == TimeLimitError::Zero),
            ("-3h", |err| matches!(err, TimeLimitError::Negative(_))),
            ("-5", |err| matches!(err, TimeLimitError::Negative(_))),
            ("soon", |err| matches!(err, TimeLimitError::Unparsable(_))),
            ("4 hours", |err| matches!(err, TimeLimitError::Unparsable(_))),
            ("h", |err| matches!(err, TimeLimitError::Unparsable(_))),
            ("", |err| matches!(err, TimeLimitError::Unparsable(_))),
            ("1.5", |err| matches!(err, TimeLimitError::Fractional(_))),
            ("366d", |err| matches!(err, TimeLimitError::Absurd(_))),
            ("99999999999999999999999d", |err| matches!(err, TimeLimitError::Absurd(_))),
        ];
        for (text, expected) in cases {
            let err = TimeLimit::parse(text).unwrap_err();
            assert!(expected(&err), "{text:?} → {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert!(TimeLimit::parse("soon").unwrap_err().to_string().contains("\"90m\""), "the message shows the way");
    }

    #[test]
    fn limits_show_in_the_largest_unit_that_divides_them() {
        for (seconds, text) in
            [(7_200, "2h"), (5_400, "90m"), (45, "45s"), (172_800, "2d"), (90_000, "25h"), (61, "61s")]
        {
            let limit = TimeLimit::from_seconds(seconds).unwrap();
            assert_eq!(limit.to_string(), text);
            assert_eq!(TimeLimit::parse(text), Ok(limit), "what is shown reads back");
        }
    }

    #[test]
    fn json_takes_text_or_whole_seconds_and_writes_text() {
        let read = |json: &str| serde_json::from_str::<TimeLimit>(json).map_err(|err| err.to_string());
        assert_eq!(read(r#""4h""#), Ok(TimeLimit(14_400)));
        assert_eq!(read("5400"), Ok(TimeLimit(5_400)));
        assert_eq!(read("5400.0"), Ok(TimeLimit(5_400)));
        assert!(read("0").unwrap_err().contains("zero"));
        assert!(read("-60").unwrap_err().contains("negative"));
        assert!(read("1.5").unwrap_err().contains("whole number"));
        assert!(read("1e300").unwrap_err().contains("absurdly long"));
        assert!(read("true").is_err());
        assert_eq!(serde_json::to_string(&TimeLimit(5_400)).unwrap(), r#""90m""#);
    }

    #[test]
    fn the_ceiling_is_the_cap_or_thirty_days() {
        let hours = |count: u64| TimeLimit::from_seconds(count * 3_600).unwrap();
        assert_eq!(TimeLimit::ceiling(None).seconds(), DEFAULT_CEILING_SECONDS);
        assert_eq!(hours(24 * 30).over_ceiling(None), None);
        assert!(hours(24 * 30 + 1).over_ceiling(None).unwrap().contains("30d"));
        assert_eq!(hours(12).over_ceiling(Some(hours(12))), None);
        let message = hours(13).over_ceiling(Some(hours(12))).unwrap();
        assert!(
            message.contains("13h") && message.contains("12h") && message.contains("--max-time-limit"),
            "{message}"
        );
        assert_eq!(hours(24 * 40).over_ceiling(Some(hours(24 * 60))), None, "a cap may allow more than 30 days");
    }

    #[test]
    fn a_policy_gives_the_default_and_refuses_what_is_over_the_ceiling() {
        let hours = |count: u64| TimeLimit::from_seconds(count * 3_600).unwrap();
        let none = TimeLimitPolicy::default();
        assert_eq!((none.check(None), none.applied(None)), (Ok(()), None), "no settings: no limit, as before");
        assert_eq!((none.check(Some(hours(4))), none.applied(Some(hours(4)))), (Ok(()), Some(hours(4))));
        assert!(none.check(Some(hours(24 * 31))).unwrap_err().contains("30d"));
        let course = TimeLimitPolicy::new(Some(hours(6)), Some(hours(12))).unwrap();
        assert_eq!(course.applied(None), Some(hours(6)));
        assert_eq!(course.applied(Some(hours(2))), Some(hours(2)), "a job's own limit wins");
        assert_eq!(course.check(Some(hours(12))), Ok(()));
        assert!(course.check(Some(hours(13))).unwrap_err().contains("12h"));
        let err = TimeLimitPolicy::new(Some(hours(13)), Some(hours(12))).unwrap_err();
        assert!(err.contains("--default-time-limit") && err.contains("--max-time-limit"), "{err}");
        assert!(TimeLimitPolicy::new(Some(hours(24 * 31)), None).is_err());
    }

    #[test]
    fn the_reason_says_where_the_job_stood() {
        let limit = TimeLimit::parse("2h").unwrap();
        let at = crate::domain::JobProgress { phase: 2, phases: 2, epoch: 37, epochs: 50, ..Default::default() };
        assert_eq!(reached_reason(limit, Some(&at)), "time limit 2h reached at phase 2, epoch 37 of 50");
        assert_eq!(reached_reason(limit, None), "time limit 2h reached before training started");
        let starting = crate::domain::JobProgress { phases: 2, ..Default::default() };
        assert_eq!(reached_reason(limit, Some(&starting)), "time limit 2h reached before training started");
    }
}
