//! Retention, pure: how old a finished job must be for gc and retention
//! (`parse_age`: `30d`, `12h`, `90m`) and which of a pruned job's files stay (`KeepList`).

use std::path::Path;
use std::time::Duration;

/// What retention keeps of an old job when the admin names nothing (`--retention-keep`): the
/// final weights, the numbers, the plots and the log; the phase and per-epoch checkpoints and the
/// resumable state, which are most of a job's bytes, go.
pub const DEFAULT_RETENTION_KEEP: &str = "final.safetensors,*.json,*.csv,*.svg,*.png,log.txt,cam";

/// Bytes for people: `812 B`, `4.2 kB`, `61.3 MB`, `1.27 GB` (powers of 1000, as `df -H`).
pub fn human_bytes(bytes: u64) -> String {
    let value = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", value / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", value / 1e6),
        _ => format!("{:.2} GB", value / 1e9),
    }
}

/// Parses an age: a whole number followed by `d` (days), `h` (hours), `m` (minutes) or `s`
/// (seconds, for scripts and tests).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let fix = "write a whole number and a unit: `30d` (days), `12h` (hours) or `90m` (minutes)";
    let Some(unit) = text.chars().last() else { return Err(format!("an age is required; {fix}")) };
    let seconds = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(format!("`{text}` has no unit; {fix}")),
    };
    let number: u64 = text[..text.len() - 1].parse().map_err(|_| format!("`{text}` is not an age; {fix}"))?;
    if number == 0 {
        return Err(format!("`{text}` would select every finished job; {fix}, above 0"));
    }
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("`{text}` is too long; {fix}"))
}

/// The files a prune keeps: each pattern names a file or folder (`final.safetensors`, `plots`,
/// `state/resume.safetensors`) or a file name with `*` wildcards (`*.json`). A file is kept when a
/// pattern matches its path inside the job's folder, its name, or the name of a folder it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepList {
    patterns: Vec<String>,
}

impl KeepList {
    /// Parses patterns (one per item; a comma-separated item is split), refusing empty ones and
    /// ones that climb out of the job's folder.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<KeepList, String> {
        let mut patterns = Vec::new();
        for item in items {
            for pattern in item.as_ref().split(',').map(str::trim) {
                if pattern.is_empty() {
                    return Err(String::from(
                        "an empty pattern; list file names such as `final.safetensors,metrics.json,plots`",
                    ));
                }
                if pattern.starts_with('/') || pattern.split('/').any(|part| part == ".." || part.is_empty()) {
                    return Err(format!("`{pattern}` is not a path inside a job's folder; name files such as `final.safetensors` or folders such as `plots`"));
                }
                if !patterns.iter().any(|known| known == pattern) {
                    patterns.push(pattern.to_string());
                }
            }
        }
        Ok(KeepList { patterns })
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the file at `relative` (inside the job's folder) is kept.
    pub fn keeps(&self, relative: &Path) -> bool {
        let whole = relative.to_string_lossy();
        let parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
        self.patterns.iter().any(|pattern| {
            if pattern.contains('/') {
                return glob(pattern, &whole) || whole.starts_with(&format!("{pattern}/"));
            }
            parts.iter().any(|part| glob(pattern, part))
        })
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|at| tail.is_char_boundary(*at)).any(|at| glob(rest, &tail[at..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(4_200), "4.2 kB");
        assert_eq!(human_bytes(61_300_000), "61.3 MB");
        assert_eq!(human_bytes(1_270_000_000), "1.27 GB");
    }

    #[test]
    fn ages_have_a_unit() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age(" 90m "), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_age("5s"), Ok(Duration::from_secs(5)));
        for bad in ["", "30", "d", "3.5d", "-1d", "0d", "30w", "99999999999999999d"] {
            let err = parse_age(bad).unwrap_err();
            assert!(err.contains("30d"), "{bad}: {err}");
        }
    }

    #[test]
    fn keep_lists_match_names_folders_and_wildcards() {
        let keep = KeepList::parse(&["final.safetensors,*.json", "plots", "state/resume.safetensors"]).unwrap();
        for kept in [
            "artifacts/final.safetensors",
            "artifacts/metrics.json",
            "job.json",
            "artifacts/plots/roc.png",
            "state/resume.safetensors",
        ] {
            assert!(keep.keeps(Path::new(kept)), "{kept}");
        }
        for gone in [
            "artifacts/phase1.safetensors",
            "log.txt",
            "artifacts/final.safetensors.bak",
            "state/other.safetensors",
            "artifacts/predictions.csv",
        ] {
            assert!(!keep.keeps(Path::new(gone)), "{gone}");
        }
        assert_eq!(keep.patterns().len(), 4);
        for bad in ["", "a,,b", "../x", "/etc", "a//b"] {
            assert!(KeepList::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_retention_keeps_results_and_drops_phase_checkpoints() {
        let keep = KeepList::parse(&[DEFAULT_RETENTION_KEEP]).unwrap();
        assert!(keep.keeps(Path::new("artifacts/final.safetensors")));
        assert!(keep.keeps(Path::new("artifacts/cam/0.png")));
        assert!(keep.keeps(Path::new("log.txt")));
        assert!(!keep.keeps(Path::new("artifacts/phase1.safetensors")));
        assert!(!keep.keeps(Path::new("state/resume.safetensors")));
    }
}
