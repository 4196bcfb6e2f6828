//! Least-recently-used eviction of the shared cache folder (`<data dir>/cache`): the pixel entries
//! of the worker's `cache.rs` (`*.bin` at the top) and the activation caches of its `features.rs`
//! (`*.bin` one folder down). A hit refreshes an entry's modification time ([`touch`]), which is
//! the LRU clock. Only `*.bin` files and the temporary files of their writers (`*.bin.tmp.*`) are
//! ever removed. Removing an entry another job is reading is safe: an open or mapped file lives
//! until it is closed (though its blocks are only freed then), and later jobs rebuild it.
//!
//! Pure filesystem code, so both sides use it: the worker keeps the cache under its budget
//! ([`evict`]) and makes room when a write finds the disk full ([`evict_to_free_keeping`]); the
//! server can free space under disk pressure ([`evict_to_free`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temporary files older than this are left over from a killed builder and are removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(24 * 3600);

/// Marks a cache file as just used (its modification time is the LRU clock of [`evict`]).
pub fn touch(path: &Path) {
    if let Ok(file) = File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// What an eviction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Files removed (entries and left-over temporary files).
    pub removed: usize,
    /// Bytes they held.
    pub freed: u64,
    /// Bytes the cache's entries hold afterwards.
    pub remaining: u64,
    /// Each file removed and its bytes, oldest first, for the caller's log.
    pub evicted: Vec<(PathBuf, u64)>,
}

impl Eviction {
    fn record(&mut self, path: PathBuf, length: u64) {
        self.removed += 1;
        self.freed += length;
        self.evicted.push((path, length));
    }
}

/// Keeps the cache under `budget` bytes: removes the least recently used entries (`*.bin` in
/// `cache_root` and its sub-folders, by modification time, which hits refresh) until the rest fit,
/// never those in `keep` (the entries its caller just wrote or read).
pub fn evict(cache_root: &Path, budget: u64, keep: &[PathBuf]) -> Eviction {
    remove_least_recently_used(
        cache_root,
        Eviction::default(),
        |eviction| eviction.remaining <= budget,
        |path, _| keep.iter().any(|kept| kept == path),
    )
}

/// Frees at least `bytes_wanted` bytes of the cache when it can, for a disk that is full or nearly
/// so: removes the temporary files of writers (`*.bin.tmp.*`) not written to within `min_age`,
/// then the least recently used entries (the same files [`evict`] chooses from) until
/// `bytes_wanted` bytes are freed. Entries modified within `min_age` are never removed: a running
/// job may have just written them and be about to read them. A writer appends to its temporary
/// file without pause, so one untouched for `min_age` belongs to a dead writer (or, at worst, a
/// stalled one whose rename then fails: a cache write is an optimisation and it carries on
/// uncached). `Eviction::freed` says how much was freed, possibly less than wanted.
pub fn evict_to_free(cache_root: &Path, bytes_wanted: u64, min_age: Duration) -> Eviction {
    evict_to_free_keeping(cache_root, bytes_wanted, min_age, &[])
}

/// [`evict_to_free`] that also spares the entries in `keep` (a worker's own entries: removing one
/// it holds mapped would free nothing while the mapping lives).
pub fn evict_to_free_keeping(cache_root: &Path, bytes_wanted: u64, min_age: Duration, keep: &[PathBuf]) -> Eviction {
    let now = SystemTime::now();
    // A modification time in the future (a clock step) counts as recent: when in doubt, keep.
    let recent = |modified: SystemTime| now.duration_since(modified).map_or(true, |age| age < min_age);
    let mut eviction = Eviction::default();
    for folder in cache_folders(cache_root) {
        remove_temporaries(&folder, |modified| !recent(modified), &mut eviction);
    }
    remove_least_recently_used(
        cache_root,
        eviction,
        |eviction| eviction.freed >= bytes_wanted,
        |path, used| recent(used) || keep.iter().any(|kept| kept == path),
    )
}

/// Best effort: deletes the temporary files in `cache_dir` that a builder killed mid-write left
/// behind (untouched for a day). Writers call it before they write.
pub fn remove_stale_temporaries(cache_dir: &Path) {
    let now = SystemTime::now();
    let stale = |modified: SystemTime| now.duration_since(modified).is_ok_and(|age| age > STALE_TEMPORARY);
    remove_temporaries(cache_dir, stale, &mut Eviction::default());
}

/// Removes the writers' temporary files in `folder` whose modification time `old` accepts.
fn remove_temporaries(folder: &Path, old: impl Fn(SystemTime) -> bool, eviction: &mut Eviction) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().contains(".bin.tmp.") {
            continue;
        }
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.modified().is_ok_and(&old) && std::fs::remove_file(entry.path()).is_ok() {
            eviction.record(entry.path(), metadata.len());
        }
    }
}

/// The cache root and its immediate sub-folders (where the activation caches live).
fn cache_folders(cache_root: &Path) -> impl Iterator<Item = PathBuf> {
    let subfolders = std::fs::read_dir(cache_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|file_type| file_type.is_dir()))
        .map(|entry| entry.path());
    std::iter::once(cache_root.to_path_buf()).chain(subfolders)
}

/// Removes entries, least recently used first, until `done` says enough, skipping those `spared`
/// (given the path and the last use) protects. `eviction` carries what was removed before.
fn remove_least_recently_used(
    cache_root: &Path,
    eviction: Eviction,
    done: impl Fn(&Eviction) -> bool,
    spared: impl Fn(&Path, SystemTime) -> bool,
) -> Eviction {
    let mut entries = Vec::new();
    for folder in cache_folders(cache_root) {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|extension| extension == "bin") {
                if let Ok(metadata) = entry.metadata() {
                    let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    entries.push((used, metadata.len(), path));
                }
            }
        }
    }
    entries.sort();
    let mut eviction = Eviction { remaining: entries.iter().map(|(_, length, _)| length).sum(), ..eviction };
    for (used, length, path) in entries {
        if done(&eviction) {
            break;
        }
        if spared(&path, used) {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            eviction.remaining -= length;
            eviction.record(path, length);
        }
    }
    eviction
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `name` with `length` bytes, last used `age` seconds ago.
    fn entry(dir: &Path, name: &str, length: usize, age: u64) -> PathBuf {
        let path = dir.join(name);
        crate::files::write_atomic_bytes(&path, &vec![7u8; length]).unwrap();
        let used = SystemTime::now() - Duration::from_secs(age);
        File::options().append(true).open(&path).unwrap().set_modified(used).unwrap();
        path
    }

    /// (removed, freed, remaining).
    fn summary(eviction: &Eviction) -> (usize, u64, u64) {
        (eviction.removed, eviction.freed, eviction.remaining)
    }

    #[test]
    fn eviction_removes_the_least_recently_used_entries_until_the_rest_fit() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), "train-128-a.bin", 400, 300);
        let old_features = entry(dir.path(), "features/train-block4-b.bin", 300, 200);
        let recent = entry(dir.path(), "test-128-c.bin", 200, 100);
        let newest = entry(dir.path(), "features/test-block4-d.bin", 100, 0);
        let unrelated = dir.path().join("notes.txt");
        std::fs::write(&unrelated, vec![0u8; 5000]).unwrap();

        // A read refreshes the clock: the oldest entry becomes the most recently used.
        touch(&oldest);
        let eviction = evict(dir.path(), 750, std::slice::from_ref(&newest));
        assert_eq!(
            eviction,
            Eviction { removed: 1, freed: 300, remaining: 700, evicted: vec![(old_features.clone(), 300)] }
        );
        assert!(!old_features.exists() && oldest.exists() && recent.exists() && newest.exists());
        assert!(unrelated.exists(), "only cache entries are ever removed");

        // `keep` survives even when it alone is over the budget.
        let eviction = evict(dir.path(), 50, std::slice::from_ref(&newest));
        assert_eq!((eviction.removed, eviction.remaining), (2, 100));
        assert!(newest.exists() && !oldest.exists() && !recent.exists());
        assert_eq!(evict(dir.path(), 1000, &[]), Eviction { removed: 0, freed: 0, remaining: 100, evicted: vec![] });
    }

    #[test]
    fn freeing_space_takes_old_temporaries_then_the_least_recently_used_entries_but_never_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), "train-128-a.bin", 400, 300);
        let older = entry(dir.path(), "features/train-block4-b.bin", 300, 200);
        let old = entry(dir.path(), "test-128-c.bin", 200, 100);
        let in_use = entry(dir.path(), "features/test-block4-d.bin", 100, 5);
        let dead_writer = entry(dir.path(), "features/val-block4-e.bin.tmp.17.0.0000abcd", 50, 300);
        let live_writer = entry(dir.path(), "val-128-f.bin.tmp.18.3.0000abcd", 60, 0);
        let unrelated = entry(dir.path(), "notes.txt", 5000, 1000);
        let min_age = Duration::from_secs(60);

        // The dead writer's 50 bytes and the oldest entry's 400 are not yet 500: the next oldest goes too.
        let eviction = evict_to_free(dir.path(), 500, min_age);
        assert_eq!(summary(&eviction), (3, 750, 300));
        assert_eq!(eviction.evicted, [(dead_writer.clone(), 50), (oldest.clone(), 400), (older.clone(), 300)]);
        assert!(!dead_writer.exists() && !oldest.exists() && !older.exists());
        assert!(old.exists() && in_use.exists() && live_writer.exists() && unrelated.exists());

        // Asking for more than there is frees what may be freed and no more.
        let eviction = evict_to_free(dir.path(), 1 << 30, min_age);
        assert_eq!(summary(&eviction), (1, 200, 100));
        assert!(!old.exists() && in_use.exists() && live_writer.exists(), "modified within min_age: spared");

        // A worker's own entries are spared whatever their age.
        let eviction = evict_to_free_keeping(dir.path(), 1 << 30, Duration::ZERO, std::slice::from_ref(&in_use));
        assert_eq!(eviction.evicted, [(live_writer.clone(), 60)]);
        assert!(in_use.exists() && unrelated.exists());
        assert_eq!(
            summary(&evict_to_free(dir.path(), 0, Duration::ZERO)),
            (0, 0, 100),
            "nothing wanted, nothing removed"
        );
    }

    #[test]
    fn only_a_day_old_temporary_file_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let stale = entry(dir.path(), "train-128-a.bin.tmp.1.0.00000001", 10, 25 * 3600);
        let fresh = entry(dir.path(), "train-128-a.bin.tmp.2.0.00000002", 10, 3600);
        remove_stale_temporaries(dir.path());
        assert!(!stale.exists() && fresh.exists());
    }
}
