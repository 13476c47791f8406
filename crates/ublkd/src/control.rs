//! A daemon's control socket, `ID.sock` beside its state file, mode 0600 (its owner only):
//! each connection gets one JSON snapshot of the device's counters, then the daemon closes it.
//! A thread of its own serves it (never a queue thread), so a slow reader costs the data path
//! nothing; the counters are read with plain loads (see `stats::counters`).

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use stats::DeviceSnapshot;

pub fn sock_path(id: u32) -> PathBuf {
    crate::state::dir().join(format!("{id}.sock"))
}

/// The bound socket; removed when dropped (the daemon exits), unless a newer daemon of the
/// same device (an upgrade) has put its own in its place meanwhile.
pub struct ControlSocket {
    path: PathBuf,
    ino: u64,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serve snapshots made by `snap` on device `id`'s socket, from a new thread.
pub fn serve(
    id: u32,
    snap: impl Fn() -> DeviceSnapshot + Send + 'static,
) -> io::Result<ControlSocket> {
    let path = sock_path(id);
    let dir = crate::state::dir();
    std::fs::create_dir_all(&dir)?;
    // Bound under a private name, made owner-only, then renamed into place: nobody can
    // connect before the mode is right, and a stale socket of a dead daemon is replaced.
    let tmp = dir.join(format!(".{id}.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    std::thread::Builder::new()
        .name(format!("ublk{id}-ctl"))
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                let body = serde_json::to_vec(&snap()).unwrap_or_default();
                let _ = c.write_all(&body);
            }
        })?;
    Ok(ControlSocket { path, ino })
}

/// The snapshot of device `id`, from its daemon.
pub fn fetch(id: u32) -> Result<DeviceSnapshot, String> {
    let path = sock_path(id);
    let what = |e: io::Error| format!("device {id}: {}: {e}", path.display());
    let mut c = UnixStream::connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!(
            "device {id} has no control socket ({}): no daemon of this version serves it",
            path.display()
        ),
        _ => what(e),
    })?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(what)?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).map_err(what)?;
    serde_json::from_slice(&buf).map_err(|e| format!("device {id}: bad snapshot: {e}"))
}

/// Snapshots of every device with a state file whose daemon answers; the others are skipped
/// (a device being added or removed, or served by an older daemon).
pub fn fetch_all() -> Vec<(u32, DeviceSnapshot)> {
    crate::state::all_ids()
        .into_iter()
        .filter_map(|id| fetch(id).ok().map(|s| (id, s)))
        .collect()
}
