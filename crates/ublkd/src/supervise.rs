//! The `--restart` supervisor: a small process that starts a device's daemon, and when the
//! daemon dies (kill -9, OOM, a crash) while the device waits for recovery, starts a recovering
//! daemon. It gives up after too many restarts in a short time, logging one line per event.
//! SIGTERM is passed on to the daemon (which then stops its device); the supervisor exits when
//! the daemon exits cleanly. `ublkd del` sends STAND_DOWN_SIGNAL instead: exit at once.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::state;

/// `ublkd del` tells a supervisor to exit without touching the daemon or the device (it stops
/// the device itself, and must not see it recovered meanwhile).
pub const STAND_DOWN_SIGNAL: i32 = libc::SIGUSR2;

/// At most this many restarts within `WINDOW`; past that the device stays quiesced for a human.
const MAX_RESTARTS: usize = 20;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The arguments for `ublkd serve`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

/// Start `ublkd ARGS` with its stdout piped; return the child and its ready line.
fn start(args: &[String]) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if !line.starts_with('{') {
        let st = child.wait().ok();
        return Err(format!(
            "the daemon exited ({st:?}) before the device was live"
        ));
    }
    Ok((child, line))
}

fn kill(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

pub fn run(a: SuperviseArgs) -> ExitCode {
    let mut sigs = crate::process::block_stop_signals();
    // SAFETY: adds a signal to a local set and blocks it in this (single-threaded) process.
    unsafe {
        libc::sigaddset(&mut sigs, STAND_DOWN_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &sigs, std::ptr::null_mut());
    }
    let mut serve_args = vec!["serve".to_string(), "--daemon".to_string()];
    serve_args.extend(a.serve_args);
    let (mut child, line) = match start(&serve_args) {
        Ok(x) => x,
        Err(e) => return crate::fail(e),
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    let Some(id) = v["id"].as_u64().map(|i| i as u32) else {
        kill(&child, libc::SIGTERM);
        return crate::fail("the daemon's ready line has no device id");
    };
    record_supervisor(id);
    // Pass the ready line on to `add`, then log to the device's log like the daemon does.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    drop(out);
    crate::process::redirect_output(&state::log_path_for(id));
    tracing::info!(
        "supervisor {} watching device {id} (daemon pid {})",
        std::process::id(),
        child.id()
    );
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        match crate::process::wait_signal(&sigs, Duration::from_millis(50)) {
            Some(STAND_DOWN_SIGNAL) => {
                tracing::info!("supervisor: standing down (ublkd del is deleting device {id})");
                return ExitCode::SUCCESS;
            }
            Some(_) => {
                tracing::info!("supervisor: stop requested; stopping daemon {}", child.id());
                kill(&child, libc::SIGTERM);
                let _ = child.wait();
                return ExitCode::SUCCESS;
            }
            None => {}
        }
        let status = match child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => return crate::fail(format!("supervisor: waiting for the daemon: {e}")),
        };
        if status.success() {
            tracing::info!(
                "supervisor: daemon exited cleanly; device {id} is gone, supervisor done"
            );
            return ExitCode::SUCCESS;
        }
        tracing::warn!(
            "supervisor: daemon {} of device {id} died ({status})",
            child.id()
        );
        restarts.retain(|t| t.elapsed() < WINDOW);
        loop {
            if restarts.len() >= MAX_RESTARTS {
                tracing::error!(
                    "supervisor: {MAX_RESTARTS} restarts within {WINDOW:?}; giving up (device {id} waits for 'ublkd recover -n {id}')"
                );
                clear_supervisor(id);
                return ExitCode::FAILURE;
            }
            restarts.push(Instant::now());
            let args = vec![
                "serve-recover".into(),
                "--daemon".into(),
                "-n".into(),
                id.to_string(),
            ];
            match start(&args) {
                Ok((c, _)) => {
                    tracing::info!("supervisor: device {id} recovered by daemon {}", c.id());
                    child = c;
                    record_supervisor(id);
                    break;
                }
                Err(e) => {
                    // The driver may not have noticed the death yet, or the device is gone.
                    if !std::path::Path::new(&format!("/dev/ublkc{id}")).exists() {
                        tracing::info!("supervisor: device {id} no longer exists; done");
                        return ExitCode::SUCCESS;
                    }
                    tracing::warn!("supervisor: recovery of device {id} failed: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

fn record_supervisor(id: u32) {
    if let Some(mut st) = state::load(id) {
        st.supervisor_pid = Some(std::process::id() as i32);
        st.supervisor_identity = crate::identity::Identity::current();
        let _ = state::save(&st);
    }
}

fn clear_supervisor(id: u32) {
    if let Some(mut st) = state::load(id) {
        st.supervisor_pid = None;
        st.supervisor_identity = None;
        let _ = state::save(&st);
    }
}
