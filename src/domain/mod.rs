//! The vocabulary shared by the server and the worker: job identity and states, the validated job
//! spec, the progress events a worker reports, the tensors a backbone's weights file must hold, and
//! the GPU memory a job needs.
//! No I/O lives here, except `weights_layout::check_file` reading a weights file's header.

/// Keras' `ImageDataGenerator` augmentation: the spec's `augment`, its bounds and its random draw.
pub mod augment;
pub mod backbone;
/// Device-hour budgets: the charge rule, the admission rule and their wording.
pub mod budget;
/// Chained jobs: dependency cycles, checkpoint compatibility, a waiting job's reason.
pub mod chain;
/// Keras' `class_weight`: `"balanced"` (scikit-learn's rule) or per class, checked and resolved.
pub mod class_weight;
/// The assignment's experiments, shipped as specs.
pub mod examples;
pub mod job;
pub mod memory;
/// Where a user's notifications go: the email address and webhook checks.
pub mod notify_target;
/// How a run ended: the one decision both executors share.
pub mod outcome;
pub mod relay;
/// Lab reservations: occurrences (weekly ones repeat), overlaps, and how they read.
pub mod reservation;
/// Delete and retention: gc's ages and keep lists.
pub mod retention;
/// Class rosters: the CSV an admin imports, and the checks every imported account passes.
pub mod roster;
/// Test-set scores computed as scikit-learn does: confusion matrix, precision/recall/specificity/F1, ROC and AUC.
pub mod scores;
pub mod spec;
/// Sweeps (one spec, a grid of combinations), JSON pointers and merge patches of spec documents.
pub mod sweep;
/// A job's time limit (`"90m"`, `"4h"`, seconds): parsing, display, and the server's ceiling.
pub mod time_limit;
/// One type for a moment in time, and the two encodings (RFC 3339 text, Unix seconds) its fields use.
pub mod timestamp;
pub mod user;
pub mod weights_layout;
pub mod worker_protocol;

pub use job::{Job, JobId, JobProgress, JobState};
pub use spec::{JobSpec, SpecError};
pub use time_limit::TimeLimit;
pub use timestamp::Timestamp;
pub use worker_protocol::ProgressEvent;
