//! Disk space as a resource the server manages, like devices: the free bytes of the folders trainq
//! writes (the database's data dir, the job folders, the shared cache), the low-water mark below
//! which no job starts, what a job will write before it is started, and a reserve file that keeps
//! room for the queue's own state writes when the disk fills anyway.
//!
//! The reserve: at start the server writes `<data dir>/trainq.reserve` (`--disk-reserve-mb`).
//! When the data dir's filesystem is nearly full, or a database write fails with `SQLITE_FULL`,
//! the server deletes it, so the writes that keep the queue honest (a job's end, a re-queue) land;
//! while it is gone the server is on its reserve and refuses requests that would write (507). It
//! comes back once the disk has room again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Cache entries used this recently may be open in a running job; eviction under disk pressure
/// leaves them alone.
pub const EVICTION_MIN_AGE: Duration = Duration::from_secs(120);

/// The file that holds the reserve, in the data dir.
pub const RESERVE_FILE: &str = "trainq.reserve";

/// What the admin set.
#[derive(Debug, Clone)]
pub struct DiskSettings {
    /// No job starts when less than this would be free on a folder's filesystem after its writes.
    pub low_water_bytes: u64,
    /// The size of the reserve file.
    pub reserve_bytes: u64,
    /// How often one job may go back to the queue for a full disk before it fails.
    pub max_storage_attempts: u32,
}

/// A folder trainq writes, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The data dir: the database (and the job folders unless `--shared-dir` moves them).
    Data,
    /// The job folders: checkpoints, logs, plots.
    Jobs,
    /// The shared cache of decoded images and frozen-layer activations.
    Cache,
}

impl Role {
    /// Every folder role, in the order they are measured.
    pub const ALL: [Role; 3] = [Role::Data, Role::Jobs, Role::Cache];

    /// The name in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Data => "data",
            Role::Jobs => "jobs",
            Role::Cache => "cache",
        }
    }
}

/// One folder's filesystem, as just measured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Space {
    /// Which folder.
    pub role: Role,
    /// Its path.
    pub path: PathBuf,
    /// Bytes an unprivileged writer may still use (`f_bavail`).
    pub free_bytes: u64,
    /// The filesystem's size.
    pub total_bytes: u64,
    /// The filesystem (`st_dev`), so folders on one disk are counted once.
    #[serde(skip)]
    pub device: u64,
}

/// Not enough room to start a job, in a sentence a student understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// The folder that is short.
    pub path: PathBuf,
    /// Free bytes there.
    pub free_bytes: u64,
    /// What the job (plus the low-water mark) needs there.
    pub needed_bytes: u64,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waiting for disk space: {} free on {}, needs about {}",
            gigabytes(self.free_bytes),
            self.path.display(),
            gigabytes(self.needed_bytes)
        )
    }
}

/// A request that must write while the disk is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// The folder that is full.
    pub path: PathBuf,
    /// Free bytes there.
    pub free_bytes: u64,
}

impl Full {
    /// The filesystem under `path` as it stands.
    pub fn at(path: &Path) -> Full {
        let free_bytes = measure(Role::Jobs, path).map_or(0, |space| space.free_bytes);
        Full { path: path.to_path_buf(), free_bytes }
    }

    /// The data dir as it stands, for a database write that failed because its disk is full
    /// (the last [`Disk`] made in this process names the folder).
    pub fn of_data_dir() -> Full {
        Full::at(&DATA_DIR.get().cloned().unwrap_or_default())
    }
}

/// The data dir of this process's server, for [`Full::of_data_dir`].
static DATA_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// "1.2 GB", "0.03 GB".
pub fn gigabytes(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 0.1 {
        format!("{gb:.1} GB")
    } else {
        format!("{gb:.3} GB")
    }
}

/// Measures the filesystem that holds `path`.
pub fn measure(role: Role, path: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `name` is a valid C string and `stat` a plain struct statvfs fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(name.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let device = std::fs::metadata(path)?.dev();
    let block = stat.f_frsize as u64;
    Ok(Space {
        role,
        path: path.to_path_buf(),
        free_bytes: stat.f_bavail as u64 * block,
        total_bytes: stat.f_blocks as u64 * block,
        device,
    })
}

/// The server's view of its disks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Disk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    folders: Vec<(Role, PathBuf)>,
    settings: DiskSettings,
    reserve: PathBuf,
    /// Whether the reserve file is in place (false: the server lives on it, writes get 507).
    reserve_held: AtomicBool,
}

impl Disk {
    /// Watches `data_dir` (the database), `jobs_dir` and `cache_dir` (created if missing), and puts
    /// the reserve in place if there is room for it.
    pub fn new(data_dir: &Path, jobs_dir: &Path, cache_dir: &Path, settings: DiskSettings) -> Disk {
        let _ = DATA_DIR.set(data_dir.to_path_buf());
        for dir in [jobs_dir, cache_dir] {
            if let Err(err) = std::fs::create_dir_all(dir) {
                tracing::warn!(path = %dir.display(), error = %err, "could not create a folder");
            }
        }
        let disk = Disk {
            inner: Arc::new(Inner {
                folders: vec![
                    (Role::Data, data_dir.to_path_buf()),
                    (Role::Jobs, jobs_dir.to_path_buf()),
                    (Role::Cache, cache_dir.to_path_buf()),
                ],
                reserve: data_dir.join(RESERVE_FILE),
                reserve_held: AtomicBool::new(false),
                settings,
            }),
        };
        disk.restore_reserve();
        disk
    }

    /// The settings.
    pub fn settings(&self) -> &DiskSettings {
        &self.inner.settings
    }

    /// Every watched folder's filesystem now (a folder that can't be measured is left out and logged).
    pub fn measure_all(&self) -> Vec<Space> {
        self.inner
            .folders
            .iter()
            .filter_map(|(role, path)| match measure(*role, path) {
                Ok(space) => Some(space),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot measure free space");
                    None
                }
            })
            .collect()
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.folders[2].1
    }

    fn data_space(&self) -> Option<Space> {
        let (role, path) = &self.inner.folders[0];
        measure(*role, path).ok()
    }

    /// Whether the reserve file is in place.
    pub fn reserve_held(&self) -> bool {
        self.inner.reserve_held.load(Ordering::SeqCst)
    }

    /// Deletes the reserve so the queue's state writes can land; true if it was there.
    pub fn release_reserve(&self) -> bool {
        if !self.inner.reserve_held.swap(false, Ordering::SeqCst) {
            return false;
        }
        match std::fs::remove_file(&self.inner.reserve) {
            Ok(()) => {
                tracing::warn!(
                    path = %self.inner.reserve.display(),
                    bytes = self.inner.settings.reserve_bytes,
                    "the disk is full: released the reserve so the queue's state can still be written; requests that write get 507 until there is room"
                );
                true
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => {
                tracing::error!(error = %err, "could not delete the disk reserve");
                false
            }
        }
    }

    /// Puts the reserve back once the data dir's filesystem has room for it above the low-water
    /// mark; returns whether it is in place.
    fn restore_reserve(&self) -> bool {
        if self.reserve_held() {
            return true;
        }
        let settings = &self.inner.settings;
        if settings.reserve_bytes == 0 {
            return false;
        }
        let existing = std::fs::metadata(&self.inner.reserve).map_or(0, |metadata| metadata.len());
        let Some(space) = self.data_space() else { return false };
        if existing < settings.reserve_bytes && space.free_bytes < settings.reserve_bytes + settings.low_water_bytes {
            return false;
        }
        match allocate(&self.inner.reserve, settings.reserve_bytes) {
            Ok(()) => {
                self.inner.reserve_held.store(true, Ordering::SeqCst);
                tracing::info!(path = %self.inner.reserve.display(), bytes = settings.reserve_bytes, "disk reserve in place");
                true
            }
            Err(err) => {
                let _ = std::fs::remove_file(&self.inner.reserve);
                tracing::warn!(error = %err, "could not write the disk reserve");
                false
            }
        }
    }

    /// Whether a request may write: the reserve is in place (else 507 naming the data dir and its
    /// free bytes).
    pub fn writable(&self) -> Result<(), Full> {
        if self.reserve_held() || self.inner.settings.reserve_bytes == 0 {
            return Ok(());
        }
        let (_, path) = &self.inner.folders[0];
        Err(Full { path: path.clone(), free_bytes: self.data_space().map_or(0, |space| space.free_bytes) })
    }

    /// The scheduler's per-pass care of the disks, given their measurements: release the reserve
    /// when the data dir is nearly full, put it back when there is room, and evict cache entries
    /// while a filesystem that holds the cache is below the low-water mark. Returns whether it
    /// changed anything (measure again then).
    pub fn maintain(&self, spaces: &[Space]) -> bool {
        let settings = &self.inner.settings;
        let mut changed = false;
        if let Some(data) = spaces.iter().find(|space| space.role == Role::Data) {
            if self.reserve_held() && data.free_bytes < (settings.reserve_bytes / 2).max(1 << 20) {
                changed |= self.release_reserve();
            } else if !self.reserve_held() {
                changed |= self.restore_reserve();
            }
        }
        if let Some(cache) = spaces.iter().find(|space| space.role == Role::Cache) {
            if cache.free_bytes < settings.low_water_bytes {
                changed |= self.evict(settings.low_water_bytes - cache.free_bytes) > 0;
            }
        }
        changed
    }

    /// Frees up to `bytes` from the cache (least recently used entries first, none used in the
    /// last [`EVICTION_MIN_AGE`]); returns the bytes freed.
    pub fn evict(&self, bytes: u64) -> u64 {
        let eviction = crate::files::evict::evict_to_free(self.cache_dir(), bytes, EVICTION_MIN_AGE);
        if eviction.freed > 0 {
            tracing::warn!(removed = eviction.removed, freed = eviction.freed, "disk short: evicted cache entries");
        }
        eviction.freed
    }

    /// Whether `needs` (bytes per role) fits above the low-water mark; folders on one filesystem
    /// add up. The first filesystem that is short, else `None`.
    pub fn shortage(&self, spaces: &[Space], needs: &[(Role, u64)]) -> Option<Shortage> {
        let mut by_device: Vec<(&Space, u64)> = Vec::new();
        for space in spaces {
            let need: u64 = needs.iter().filter(|(role, _)| *role == space.role).map(|(_, bytes)| bytes).sum();
            match by_device.iter_mut().find(|(seen, _)| seen.device == space.device) {
                Some((_, total)) => *total += need,
                None => by_device.push((space, need)),
            }
        }
        let low_water = self.inner.settings.low_water_bytes;
        by_device.into_iter().find(|(space, need)| space.free_bytes < need + low_water).map(|(space, need)| Shortage {
            path: space.path.clone(),
            free_bytes: space.free_bytes,
            needed_bytes: need + low_water,
        })
    }

    /// The tightest folder in words ("0.3 GB free on /var/lib/trainq"), for failure messages.
    pub fn describe(&self) -> Option<String> {
        let spaces = self.measure_all();
        let tightest = spaces.iter().min_by_key(|space| space.free_bytes)?;
        Some(format!("{} free on {}", gigabytes(tightest.free_bytes), tightest.path.display()))
    }
}

/// Writes `bytes` of real blocks to `path` (`posix_fallocate`, so a sparse file cannot pretend).
fn allocate(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    if bytes > 0 {
        // SAFETY: a valid open file descriptor.
        let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result));
        }
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(low_water_bytes: u64, reserve_bytes: u64) -> DiskSettings {
        DiskSettings { low_water_bytes, reserve_bytes, max_storage_attempts: 3 }
    }

    fn space(role: Role, device: u64, free_bytes: u64) -> Space {
        Space { role, path: PathBuf::from(format!("/{}", role.as_str())), free_bytes, total_bytes: 100 << 30, device }
    }

    #[test]
    fn needs_on_one_filesystem_add_up_and_the_low_water_mark_counts() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path(), &dir.path().join("jobs"), &dir.path().join("cache"), settings(1_000, 0));
        let shared = [space(Role::Data, 1, 10_000), space(Role::Jobs, 1, 10_000), space(Role::Cache, 1, 10_000)];
        assert_eq!(disk.shortage(&shared, &[(Role::Jobs, 5_000), (Role::Cache, 4_000)]), None);
        let short = disk.shortage(&shared, &[(Role::Jobs, 5_000), (Role::Cache, 4_500)]).unwrap();
        assert_eq!((short.free_bytes, short.needed_bytes), (10_000, 10_500));
        assert_eq!(short.to_string(), "waiting for disk space: 0.000 GB free on /data, needs about 0.000 GB");
        // The cache on its own disk: only its own need counts there.
        let split = [space(Role::Data, 1, 10_000), space(Role::Jobs, 1, 10_000), space(Role::Cache, 2, 5_000)];
        assert_eq!(disk.shortage(&split, &[(Role::Jobs, 8_000), (Role::Cache, 3_000)]), None);
        assert_eq!(disk.shortage(&split, &[(Role::Cache, 4_500)]).unwrap().path, PathBuf::from("/cache"));
    }

    #[test]
    fn the_reserve_is_held_released_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path(), &dir.path().join("jobs"), &dir.path().join("cache"), settings(0, 1 << 20));
        let reserve = dir.path().join(RESERVE_FILE);
        assert!(disk.reserve_held());
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1 << 20);
        assert!(disk.writable().is_ok());
        assert!(disk.release_reserve());
        assert!(!reserve.exists());
        let full = disk.writable().unwrap_err();
        assert_eq!(full.path, dir.path());
        // Room again (this test's disk has plenty): the next pass puts it back.
        assert!(disk.maintain(&disk.measure_all()));
        assert!(disk.reserve_held() && reserve.exists());
        assert!(disk.writable().is_ok());
    }

    #[test]
    fn a_real_folder_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let space = measure(Role::Jobs, dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes, "{space:?}");
        assert!(measure(Role::Jobs, &dir.path().join("missing")).is_err());
        assert_eq!(gigabytes(1_234_000_000), "1.2 GB");
        assert_eq!(gigabytes(30_000_000), "0.030 GB");
    }
}
