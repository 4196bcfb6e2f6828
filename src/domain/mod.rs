//! The vocabulary shared by the server and the worker: job identity and states, the validated job
//! spec, and the progress events a worker reports. No I/O lives here.

pub mod job;
pub mod backbone;
pub mod progress;
pub mod spec;

pub use job::{Job, JobId, JobProgress, JobState};
pub use progress::ProgressEvent;
pub use spec::{JobSpec, SpecError};
