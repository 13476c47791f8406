//! A daemon's process plumbing: stop signals taken on the main thread with `sigtimedwait`
//! (blocked in every thread), and its output moved to its log file.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// Block the stop signals in every thread; the main thread takes them with `sigtimedwait`.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; pthread_sigmask affects this thread and the
    // threads it spawns afterwards.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The signal `ublkd upgrade` sends a daemon whose device cannot be quiesced safely (batch I/O
/// commands): leave the device to the driver, which holds its I/O for the next daemon.
pub(crate) const HANDOVER_SIGNAL: i32 = libc::SIGUSR1;

/// Block the stop signals, the hand-over and the resize signal; the serve loop takes them.
pub(crate) fn block_daemon_signals() -> libc::sigset_t {
    let mut set = block_stop_signals();
    // SAFETY: as in block_stop_signals.
    unsafe {
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
        libc::sigaddset(&mut set, crate::resize::RESIZE_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Wait up to `d` for a stop signal; returns it.
pub(crate) fn wait_signal(set: &libc::sigset_t, d: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    };
    // SAFETY: valid set and timeout pointers; a null siginfo is allowed.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

/// Point stdout and stderr at the log file (append), stdin at /dev/null.
pub(crate) fn redirect_output(log: &std::path::Path) {
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let null = std::fs::File::open("/dev/null").ok();
    // SAFETY: dup2 onto the standard descriptors; both source fds are valid and stay open for
    // the duration of the calls.
    unsafe {
        libc::dup2(f.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
        if let Some(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
    }
}

/// Tell systemd we are ready (`READY=1` on $NOTIFY_SOCKET, the sd_notify protocol), when it
/// started us as a Type=notify service; nothing otherwise.
pub(crate) fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    // A leading '@' names a socket in the abstract namespace.
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent =
        UnixDatagram::unbound().and_then(|s| addr.and_then(|a| s.send_to_addr(b"READY=1", &a)));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd at {path}: {e}");
    }
}
