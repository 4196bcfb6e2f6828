//! The scheduling decision as a pure function, so it can be tested without a database.

/// Pairs queued jobs with free devices: oldest job first, devices in inventory order. Each job and
/// each device appears at most once in the answer.
pub fn next_assignments<J: Copy, D: Copy>(queued_oldest_first: &[J], free_devices: &[D]) -> Vec<(J, D)> {
    queued_oldest_first.iter().copied().zip(free_devices.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_jobs_get_the_free_devices() {
        assert_eq!(next_assignments(&[10, 11, 12], &["gpu1", "gpu3"]), [(10, "gpu1"), (11, "gpu3")]);
    }

    #[test]
    fn nothing_happens_without_jobs_or_devices() {
        assert!(next_assignments::<u32, &str>(&[], &["gpu0"]).is_empty());
        assert!(next_assignments::<u32, &str>(&[1, 2], &[]).is_empty());
    }

    #[test]
    fn spare_devices_stay_free() {
        assert_eq!(next_assignments(&[7], &["cpu0", "cpu1"]), [(7, "cpu0")]);
    }
}
