//! `ublkd add`: start a daemon for a new device and return once the device is live.
//!
//! The daemon is this binary (`ublkd serve --daemon`) in its own session. It prints one JSON
//! line on stdout when the device is live, then moves its output to the device's log file; if
//! it fails first, its stderr carries the one-line error, which we pass on. Either way nothing
//! is left behind on failure: the daemon undoes what it created before exiting.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use clap::Args;

use crate::device_args::{DeviceArgs, Recovery};

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Serve in this process instead of a background daemon (Ctrl-C stops and removes it).
    #[arg(long)]
    pub foreground: bool,
    /// Print the device's description as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run a supervisor that recovers the device whenever its daemon dies (needs --recovery
    /// other than off).
    #[arg(long)]
    pub restart: bool,
}

/// The arguments after `add`, minus the ones only `add` understands.
fn passthrough_args() -> Vec<String> {
    let argv: Vec<String> = std::env::args().collect();
    let pos = argv
        .iter()
        .position(|a| a == "add")
        .map(|p| p + 1)
        .unwrap_or(argv.len());
    argv[pos..]
        .iter()
        .filter(|a| *a != "--foreground" && *a != "--json" && *a != "--restart")
        .cloned()
        .collect()
}

pub fn run(a: AddArgs) -> ExitCode {
    // Check what we can before starting anything.
    if let Err(e) = a.dev.target.to_spec() {
        return crate::fail(e);
    }
    match a.dev.options() {
        Ok(o) => {
            if let Err(e) = ublk::device::check_options(&o) {
                return crate::fail(e);
            }
        }
        Err(e) => return crate::fail(e),
    }
    if let Err(e) = a.dev.check_user() {
        return crate::fail(e);
    }
    if let Err(e) = crate::state::state_dir() {
        return crate::fail(e);
    }
    if let Some(n) = &a.dev.name
        && let Err(e) = crate::naming::check_new_name(n)
    {
        return crate::fail(e);
    }
    if a.foreground {
        return crate::serve::run(crate::serve::ServeArgs {
            dev: a.dev,
            daemon: false,
        });
    }
    if a.restart && a.dev.recovery() == Recovery::Off {
        return crate::fail("--restart needs a recovery mode (drop --recovery off)");
    }
    let mut args = if a.restart {
        vec!["supervise".to_string(), "--".to_string()]
    } else {
        vec!["serve".to_string(), "--daemon".to_string()]
    };
    args.extend(passthrough_args());
    spawn_daemon(args, a.json)
}

/// Start this binary with `args` as a daemon in its own session and wait for its ready line
/// (printed as the device path, or whole with `json`), or pass on its one-line error.
pub fn spawn_daemon(args: Vec<String>, json: bool) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return crate::fail(format!("cannot find our own binary: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the daemon leaves our session so a terminal hangup
    // or Ctrl-C in the caller's shell does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return crate::fail(format!("cannot start the daemon: {e}")),
    };
    let mut out = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let line = out.lines().find(|l| l.starts_with('{'));
    match line {
        Some(l) => {
            if json {
                crate::out::print(l)
            } else {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                crate::out::print(v["block_device"].as_str().unwrap_or("?"))
            }
        }
        None => {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            let status = child.wait();
            // The daemon's own error line says it all; pass on its last error-looking line.
            let msg = err
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .map(|l| l.trim_start_matches("ublkd: error: ").to_string())
                .unwrap_or_else(|| {
                    format!("the daemon exited ({status:?}) before the device was live")
                });
            crate::fail(msg)
        }
    }
}
