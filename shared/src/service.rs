//! What a service manager sees of a running binary: readiness, status and stopping, sent to
//! systemd's `$NOTIFY_SOCKET` (units with `Type=notify`) and also logged, so a supervisor without
//! systemd can wait for the same line. Without `$NOTIFY_SOCKET` only the log line is written.

use tracing::{info, warn};

/// The log line that marks readiness; documented in the README for non-systemd supervisors.
pub const READY_LINE: &str = "ready";

/// Tells the service manager the process is ready to do its job, with a one-line status.
pub fn ready(status: &str) {
    info!(status, "{READY_LINE}");
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
}

/// A status line shown by `systemctl status` (e.g. the bulk pass's phase).
pub fn status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

/// Tells the service manager the process has begun to stop.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(states: &[sd_notify::NotifyState]) {
    // Without $NOTIFY_SOCKET this does nothing. A failed notification is not fatal: systemd then times the start out and says so.
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify the service manager: {e}");
    }
}
