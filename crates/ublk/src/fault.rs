//! Fault injection for the test suite, set by environment variables read when a queue starts.
//! Each makes the driver or the ring misbehave in a way the code must survive; none is set in
//! normal use.

use std::cell::Cell;
use std::io;

/// `UBLKD_FAULT_QUEUE_START`: a queue fails before fetching, which must make device creation
/// fail cleanly rather than hang in START_DEV.
pub(crate) fn before_start() -> io::Result<()> {
    if std::env::var_os("UBLKD_FAULT_QUEUE_START").is_some() {
        return Err(io::Error::other("UBLKD_FAULT_QUEUE_START is set"));
    }
    Ok(())
}

/// `UBLKD_FAULT_RING_ENTRIES=N`: rings too small for the load, so the kernel ends multishot
/// fetches (batch mode), which must be re-armed without losing a tag.
pub(crate) fn ring_entries() -> Option<u32> {
    std::env::var("UBLKD_FAULT_RING_ENTRIES").ok()?.parse().ok()
}

/// `UBLKD_FAULT_REFUSE_COMMIT=N`: the Nth commit of each queue names no buffer (copy mode),
/// which the driver refuses; the request must then fail with EIO instead of hanging.
pub(crate) struct RefuseCommit(Cell<u64>);

impl RefuseCommit {
    pub(crate) fn from_env() -> RefuseCommit {
        let n = std::env::var("UBLKD_FAULT_REFUSE_COMMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        RefuseCommit(Cell::new(n))
    }

    /// Count one commit; true for the Nth.
    pub(crate) fn now(&self) -> bool {
        match self.0.get() {
            0 => false,
            n => {
                self.0.set(n - 1);
                n == 1
            }
        }
    }
}
