//! Metadata write-out before acknowledgement, batched across queues (group commit).
//!
//! imago keeps changed L2 tables and refcount blocks in its caches. A write that changed them
//! (allocation, copy-on-write from the backing, zeroing, discarding) must not be acknowledged
//! before that metadata is in the image file: if the daemon died first, the data would be
//! unreachable although acknowledged. Nor may a write into a cluster that such a change just made
//! reachable: its data is only as reachable as that metadata.
//!
//! Every metadata-changing request takes a ticket before it starts and hands it back when done.
//! A write-out (imago's `flush`, which writes cached metadata in dependency order) covers every
//! ticket below the oldest one still running when it starts. A request returns once a write-out
//! covers its ticket; a write into an allocated cluster returns at once when everything begun so
//! far is covered (the steady state: two atomic loads after the mapping lookup), else it waits
//! like the others. One write-out serves every request waiting for it, on every queue.

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use imago::FormatAccess;

use super::storage::UringFile;

#[derive(Default)]
pub(super) struct MetaCommit {
    /// The last ticket taken.
    taken: AtomicU64,
    /// Every ticket up to this one was covered by a finished write-out.
    covered: AtomicU64,
    /// Tickets taken and not yet handed back.
    running: Mutex<BTreeSet<u64>>,
    /// One write-out at a time; waiters queue here and usually find their ticket covered.
    writing: tokio::sync::Mutex<()>,
    /// Woken when a ticket is handed back (a write-out may then cover more).
    returned: tokio::sync::Notify,
}

/// A metadata-changing request in progress: handed back when done, or dropped (a request
/// abandoned halfway must not hold every later write-out back).
pub(super) struct Ticket<'a> {
    commit: &'a MetaCommit,
    t: u64,
}

impl Ticket<'_> {
    /// The request is done (whether it succeeded or not); returns until when it must wait.
    pub(super) fn hand_back(self) -> u64 {
        self.t // (the drop below hands it back)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let c = self.commit;
        c.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.t);
        c.returned.notify_waiters();
    }
}

impl MetaCommit {
    /// Before a request that may change metadata.
    pub(super) fn take(&self) -> Ticket<'_> {
        let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        r.insert(t);
        Ticket { commit: self, t }
    }

    /// What a write-out starting now covers: everything below the oldest running ticket.
    fn coverable(&self) -> u64 {
        let r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match r.first() {
            Some(oldest) => oldest - 1,
            None => self.taken.load(Ordering::SeqCst),
        }
    }

    /// After a write that changed no metadata itself: the tickets it may depend on (those
    /// taken so far), or `None` when all of them are covered already.
    pub(super) fn pending(&self) -> Option<u64> {
        let t = self.taken.load(Ordering::SeqCst);
        (self.covered.load(Ordering::SeqCst) < t).then_some(t)
    }

    /// Return once a write-out covers ticket `upto`, doing one if nobody else is.
    pub(super) async fn wait(&self, upto: u64, access: &FormatAccess<UringFile>) -> io::Result<()> {
        loop {
            if self.covered.load(Ordering::SeqCst) >= upto {
                return Ok(());
            }
            // Register for "a ticket came back" before looking, so none is missed.
            let returned = self.returned.notified();
            let g = self.writing.lock().await;
            if self.covered.load(Ordering::SeqCst) >= upto {
                return Ok(());
            }
            let cover = self.coverable();
            if cover < upto {
                // An older request is still changing metadata ours may follow; wait for it.
                drop(g);
                returned.await;
                continue;
            }
            access.flush().await?;
            self.covered.fetch_max(cover, Ordering::SeqCst);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_stops_below_the_oldest_running_ticket() {
        let c = MetaCommit::default();
        assert_eq!(c.pending(), None);
        let a = c.take();
        let b = c.take();
        assert_eq!(c.pending(), Some(2));
        assert_eq!(c.coverable(), 0);
        assert_eq!(b.hand_back(), 2);
        assert_eq!(c.coverable(), 0, "ticket 1 still runs");
        drop(a); // abandoned: handed back all the same
        assert_eq!(c.coverable(), 2);
    }
}
