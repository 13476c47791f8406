//! `ublkd add --unprivileged` and its refusals, where no ublk driver is loaded (the VM suite,
//! tests/vm/unpriv.sh, covers the real driver). Run as root, the commands run as uid 1001
//! (Command::uid); as anyone else, as that user.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "../../nbd/tests/common/mod.rs"]
mod common;
use common::run;

const UBLKD: &str = env!("CARGO_BIN_EXE_ublkd");
const USER: u32 = 1001;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `ublkd ARGS` as a non-root user with `runtime` as XDG_RUNTIME_DIR (None: unset).
fn as_user(args: &[&str], runtime: Option<&Path>) -> Command {
    let mut c = Command::new(UBLKD);
    c.args(args).env_remove("UBLKD_STATE_DIR");
    match runtime {
        Some(d) => c.env("XDG_RUNTIME_DIR", d),
        None => c.env_remove("XDG_RUNTIME_DIR"),
    };
    if is_root() {
        // (std drops root's supplementary groups when it sets the uid.)
        c.uid(USER).gid(USER);
    }
    c
}

/// Fails with one line containing `want`.
fn one_line_error(mut cmd: Command, want: &str) {
    let out = run(&mut cmd, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{cmd:?}: not one line: {err}");
    assert!(err.starts_with("ublkd: error: "), "{err}");
    assert!(err.contains(want), "{cmd:?}: {err} lacks {want:?}");
}

/// A runtime directory the user owns.
fn runtime_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if is_root() {
        std::os::unix::fs::chown(d.path(), Some(USER), Some(USER)).unwrap();
    }
    d
}

#[test]
fn without_the_driver_add_unprivileged_fails_in_one_line() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("\n*** SKIP: this machine has the ublk driver (the VM suite covers it) ***\n");
        return;
    }
    let rt = runtime_dir();
    let add = ["add", "--unprivileged", "-t", "null", "--size", "1M"];
    one_line_error(
        as_user(&add, Some(rt.path())),
        "/dev/ublk-control does not exist",
    );
    // Nothing left: no state file, and its daemon is gone.
    let left: Vec<_> = std::fs::read_dir(rt.path().join("ublkd"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().ends_with(".json")),
        "{left:?}"
    );
    // udev's helper says the same.
    one_line_error(
        {
            let mut c = Command::new(UBLKD);
            c.args(["udev-owner", "ublkc0"]);
            c
        },
        "/dev/ublk-control does not exist",
    );
}

#[test]
fn refusals_come_before_anything_starts() {
    let rt = runtime_dir();
    let with = |extra: &[&str]| {
        let mut a = vec!["add", "--unprivileged", "-t", "null", "--size", "1M"];
        a.extend_from_slice(extra);
        as_user(&a, Some(rt.path()))
    };
    one_line_error(
        with(&["--buffers", "zero-copy"]),
        "--buffers zero-copy is not allowed for an unprivileged device",
    );
    one_line_error(
        with(&["--buffers", "user-copy"]),
        "--buffers user-copy is not allowed for an unprivileged device",
    );
    one_line_error(
        with(&["--recovery", "reissue"]),
        "an unprivileged device cannot be recovered",
    );
    one_line_error(
        as_user(
            &["add", "--unprivileged", "-t", "null", "--size", "1M"],
            None,
        ),
        "XDG_RUNTIME_DIR is not set",
    );
    one_line_error(
        as_user(&["add", "-t", "null", "--size", "1M"], Some(rt.path())),
        "only root can add a privileged device: add --unprivileged",
    );
    if is_root() {
        let mut c = Command::new(UBLKD);
        c.args(["add", "--unprivileged", "-t", "null", "--size", "1M"]);
        one_line_error(c, "--unprivileged is for non-root users");
    }
}

#[test]
fn the_udev_helper_takes_only_ublk_node_names() {
    for name in ["sda", "ublk-control", "ublkc1p1", "../ublkc0"] {
        let mut c = Command::new(UBLKD);
        c.args(["udev-owner", name]);
        one_line_error(c, "is not a ublk device node");
    }
}
