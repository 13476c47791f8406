//! `ublkd resize -n ID [--size N]`: grow a live device. The daemon does the work (it owns the
//! target; see `resize.rs`): the file target grows its file, mem its memory, null its size; nbd
//! and rbd follow their server, which must have grown first. Without `--size` the device grows
//! to what its backing holds now (the file's length, the NBD export, the RBD image). The driver
//! then announces the new size (UPDATE_SIZE, Linux 6.16+) and a file system on the device can
//! grow into it (`resize2fs`, `xfs_growfs`). Shrinking is refused.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use targets::size::{format_size, parse_size};
use ublk::Control;

use crate::resize::{RESIZE_SIGNAL, answer_path, not_supported, request_path, write_json};
use crate::{daemon, state};

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The device to resize.
    #[arg(short = 'n', long = "number")]
    pub id: u32,
    /// The new size (K/M/G/T suffixes); at least the current size. Without it: the size the
    /// backing has now (file length, NBD export, RBD image), after it grew elsewhere.
    #[arg(short = 's', long, value_parser = parse_size)]
    pub size: Option<u64>,
}

pub fn run(a: ResizeArgs) -> ExitCode {
    match resize(&a) {
        Ok(line) => crate::out::print(line),
        Err(e) => crate::fail(e),
    }
}

fn resize(a: &ResizeArgs) -> Result<String, String> {
    let id = a.id;
    let mut ctrl = Control::open().map_err(|e| e.to_string())?;
    let info = ctrl.get_dev_info(id).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => format!("device {id} does not exist"),
        _ => format!("device {id}: {e}"),
    })?;
    if info.flags & ublk::uapi::UBLK_F_UPDATE_SIZE == 0 {
        return Err(not_supported(id));
    }
    let st = state::load(id).ok_or_else(|| format!("device {id} has no state file"))?;
    // Checked here too, so the common mistakes cost no round trip to the daemon.
    if let Some(size) = a.size
        && size < st.size
    {
        return Err(format!(
            "device {id} is {} and shrinking is not supported (it would cut off data)",
            format_size(st.size)
        ));
    }
    let daemon = daemon::find_daemon(id, info.ublksrv_pid, Some(&st)).ok_or_else(|| {
        format!("no daemon serves device {id}: recover it first (ublkd recover -n {id})")
    })?;
    let me = std::process::id();
    let (req, ans) = (request_path(id, me), answer_path(id, me));
    let _ = std::fs::remove_file(&ans);
    let ask = match a.size {
        Some(n) => serde_json::json!({ "size": n }),
        None => serde_json::json!({ "follow": true }),
    };
    write_json(&req, &ask).map_err(|e| format!("cannot write {}: {e}", req.display()))?;
    let cleanup = || {
        let _ = std::fs::remove_file(&req);
        let _ = std::fs::remove_file(&ans);
    };
    if let Err(e) = daemon.signal(RESIZE_SIGNAL) {
        cleanup();
        return Err(format!("cannot signal daemon {}: {e}", daemon.pid()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Ok(b) = std::fs::read(&ans) {
            break serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default();
        }
        if Instant::now() >= deadline || !state::pid_alive(daemon.pid()) {
            cleanup();
            return Err(format!(
                "daemon {} of device {id} did not answer the resize request",
                daemon.pid()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    cleanup();
    match (answer["size"].as_u64(), answer["error"].as_str()) {
        (Some(n), _) => Ok(format!("/dev/ublkb{id}: {}", format_size(n))),
        (_, Some(e)) => Err(e.to_string()),
        _ => Err("malformed answer from the daemon".into()),
    }
}
