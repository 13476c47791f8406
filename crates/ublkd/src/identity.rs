//! Which process is which. A pid alone may name another process by the time we signal it: a
//! daemon that crashed leaves its pid in the state file and in the driver, and the kernel hands
//! the number to the next process it starts. So a daemon (and a `--restart` supervisor) records
//! its start time and executable beside its pid; before any signal, `ublkd` opens a pidfd for the
//! pid, checks that the process behind it is the one meant (that identity, or: it holds the
//! device's char device, which the driver lets only the device's daemon open), and signals
//! through the pidfd, which keeps naming that one process whatever happens to the number.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What tells a process apart from a later one with the same pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Clock ticks from boot to the process's start (/proc/PID/stat field 22).
    pub start_time: u64,
    /// Its executable, as /proc/PID/exe names it.
    pub exe: Option<PathBuf>,
}

impl Identity {
    pub fn of(pid: i32) -> Option<Identity> {
        Some(Identity {
            start_time: start_time(pid)?,
            exe: exe(pid),
        })
    }

    /// This process's identity.
    pub fn current() -> Option<Identity> {
        Identity::of(std::process::id() as i32)
    }

    /// Whether `pid` is this process now.
    pub fn matches(&self, pid: i32) -> bool {
        start_time(pid) == Some(self.start_time) && (self.exe.is_none() || exe(pid) == self.exe)
    }
}

/// The fields of /proc/PID/stat after the command name (field 3, the state, first).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Start time of `pid` in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The parent of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The executable of `pid`, without the " (deleted)" the kernel appends once the file has been
/// replaced (a daemon started before its binary was upgraded).
pub fn exe(pid: i32) -> Option<PathBuf> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let b = p.as_os_str().as_bytes();
    let b = b.strip_suffix(b" (deleted)").unwrap_or(b);
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
}

/// The command name of `pid` (/proc/PID/comm).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The arguments `pid` was started with.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` has device `id`'s char device open. The driver allows one open of
/// /dev/ublkcN, by the process that serves the device.
pub fn holds_char_dev(pid: i32, id: u32) -> bool {
    let want = format!("/dev/ublkc{id}");
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l.as_os_str().as_bytes() == want.as_bytes())
}

/// A process held by a pidfd: signals reach that process or fail, never another one.
#[derive(Debug)]
pub struct Pidfd {
    pid: i32,
    fd: OwnedFd,
}

impl Pidfd {
    /// Open `pid` and keep it only if `is_it(pid)` says the process is the one meant. The check
    /// comes after the open, and the process must still be running after the check: it then
    /// held the pid all along, so the check looked at the process the pidfd names.
    pub fn verified(pid: i32, is_it: impl FnOnce(i32) -> bool) -> Option<Pidfd> {
        if pid <= 0 {
            return None;
        }
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor we just got and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let p = Pidfd { pid, fd };
        (is_it(pid) && !p.exited()).then_some(p)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) on our pidfd; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Whether the process has ended (a pidfd polls readable from then on, zombie or reaped).
    pub fn exited(&self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// Wait up to `limit` for the process to end; true once it has.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            match r {
                1.. => return true,
                0 => return false,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    #[test]
    fn identity_tells_processes_apart() {
        let me = std::process::id() as i32;
        let ident = Identity::current().unwrap();
        assert!(ident.matches(me));
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id() as i32));
        let mut child = sleeper();
        let pid = child.id() as i32;
        assert!(
            !ident.matches(pid),
            "another process, other start time or binary"
        );
        assert!(Identity::of(pid).unwrap().matches(pid));
        assert_eq!(comm(pid), "sleep");
        assert!(!holds_char_dev(pid, 0));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!Identity::of(me).unwrap().matches(pid), "gone");
    }

    #[test]
    fn pidfd_checks_after_open_and_sees_the_exit() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        assert!(Pidfd::verified(pid, |_| false).is_none());
        let p = Pidfd::verified(pid, |_| true).unwrap();
        assert!(!p.exited());
        p.signal(libc::SIGKILL).unwrap();
        assert!(
            p.wait_exit(Duration::from_secs(10)),
            "a zombie counts as ended"
        );
        child.wait().unwrap();
    }
}
