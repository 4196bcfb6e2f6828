//! SIGTERM means "save and stop": the supervisor sends it to cancel a job or to shut down, and
//! the worker answers by writing a resumable checkpoint at the next training step and exiting with
//! `EXIT_INTERRUPTED`. The handler only sets a flag; the training loop and a few places between
//! stages look at it.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_signal: libc::c_int) {
    // Async-signal-safe: one atomic store, nothing else.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Replaces SIGTERM's default (die at once) with setting the flag [`requested`] reads.
pub fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only stores
    // to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        // Interrupted system calls (reads of the dataset, writes of artifacts) restart.
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The job stopped on SIGTERM; `main` turns it into `EXIT_INTERRUPTED`.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped by SIGTERM")
    }
}

impl std::error::Error for Interrupted {}

/// Stops here when a SIGTERM arrived, between stages that write nothing a resume needs (the last
/// checkpoint stands): loading data, computing activations, the final evaluation.
pub fn check(stage: &str) -> Result<(), Interrupted> {
    if requested() {
        eprintln!("SIGTERM before {stage}: stopping; the last checkpoint stands");
        return Err(Interrupted);
    }
    Ok(())
}
