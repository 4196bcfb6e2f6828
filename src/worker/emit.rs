//! Progress events to the supervisor (stdout, one line each) and human lines to the log (stderr).

use std::io::Write;
use trainq::domain::ProgressEvent;

/// Sends one event; stdout is flushed so the server sees it at once.
pub fn emit(event: &ProgressEvent) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", event.to_line());
    let _ = stdout.flush();
}
