//! Is the client holding the server up? A connection counts what is waiting on its client (replies
//! the client has not read yet, a WRITE payload it has not finished sending) and when the client
//! last moved (bytes went out or came in). A client that stalls like that holds its requests'
//! share of the server-wide budget; past the stall timeout it is cut, and the budget goes back.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct Stall {
    waiting: Cell<u32>,
    /// When the client last moved, or when the current wait began if it has not moved since.
    moved: Cell<Instant>,
}

/// One wait on the client, ended when dropped.
pub struct Waiting<'a>(&'a Stall);

impl Stall {
    pub fn new() -> Stall {
        Stall {
            waiting: Cell::new(0),
            moved: Cell::new(Instant::now()),
        }
    }

    /// Something starts waiting on the client.
    pub fn wait(&self) -> Waiting<'_> {
        if self.waiting.get() == 0 {
            self.moved.set(Instant::now());
        }
        self.waiting.set(self.waiting.get() + 1);
        Waiting(self)
    }

    /// The client moved: bytes of ours went out, or bytes of its came in.
    pub fn moved(&self) {
        self.moved.set(Instant::now());
    }

    /// How long the client has kept us waiting without moving; `None` if nothing waits on it.
    pub fn stalled_for(&self) -> Option<Duration> {
        (self.waiting.get() > 0).then(|| self.moved.get().elapsed())
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_waiting_and_restarts_when_the_client_moves() {
        let s = Stall::new();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.stalled_for(), None);
        let w = s.wait();
        assert!(s.stalled_for().unwrap() < Duration::from_millis(20)); // from the wait, not before
        std::thread::sleep(Duration::from_millis(20));
        let w2 = s.wait();
        assert!(s.stalled_for().unwrap() >= Duration::from_millis(20)); // a second wait adds none
        s.moved();
        assert!(s.stalled_for().unwrap() < Duration::from_millis(20));
        drop((w, w2));
        assert_eq!(s.stalled_for(), None);
    }
}
