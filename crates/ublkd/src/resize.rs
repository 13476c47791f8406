//! Online resize, daemon side. The daemon owns the target, so `ublkd resize` asks it: it writes
//! a request file `ID.resize-PID.req` (`{"size": N}`, or `{"follow": true}` for the size the
//! target's backing has now) in the state directory and sends the
//! daemon `RESIZE_SIGNAL`; the daemon grows the target, records the size in the state file, tells
//! the driver (UPDATE_SIZE, Linux 6.16+) and answers in `ID.resize-PID.res`
//! (`{"size": N}` or `{"error": "one line"}`). One file per caller, so concurrent callers never
//! read each other's answers.

use std::path::PathBuf;
use std::sync::Arc;

use targets::Target;
use targets::size::format_size;
use ublk::Device;

use crate::registry::AnyTarget;
use crate::state::{self, DeviceState};

/// The signal `ublkd resize` sends a daemon after writing its request.
pub(crate) const RESIZE_SIGNAL: i32 = libc::SIGUSR2;

pub fn request_path(id: u32, pid: u32) -> PathBuf {
    state::dir().join(format!("{id}.resize-{pid}.req"))
}

pub fn answer_path(id: u32, pid: u32) -> PathBuf {
    state::dir().join(format!("{id}.resize-{pid}.res"))
}

/// Write `value` to `path` atomically (temp file + rename): the reader never sees half of it.
pub fn write_json(path: &std::path::Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(tmp, path)
}

/// Answer every pending resize request for the device (called on RESIZE_SIGNAL).
pub fn serve_requests(dev: &mut Device, target: &Arc<AnyTarget>, st: &mut DeviceState) {
    let prefix = format!("{}.resize-", st.id);
    let Ok(rd) = std::fs::read_dir(state::dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".req"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let req = std::fs::read(e.path()).ok();
        let _ = std::fs::remove_file(e.path());
        let ask = req.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let size = match ask {
            Some(v) if v["follow"].as_bool() == Some(true) => Some(backing_size(target, st)),
            Some(v) => v["size"].as_u64().map(Ok),
            None => None,
        };
        let answer = match size {
            Some(Ok(size)) => match resize(dev, target, st, size) {
                Ok(()) => serde_json::json!({ "size": size }),
                Err(e) => {
                    tracing::warn!("device {}: resize to {size} refused: {e}", st.id);
                    serde_json::json!({ "error": e })
                }
            },
            Some(Err(e)) => {
                tracing::warn!("device {}: resize refused: {e}", st.id);
                serde_json::json!({ "error": e })
            }
            None => serde_json::json!({ "error": "malformed resize request" }),
        };
        if let Err(e) = write_json(&answer_path(st.id, pid), &answer) {
            tracing::warn!("device {}: cannot answer resize request: {e}", st.id);
        }
    }
}

/// The size to follow: what the target's backing holds now.
fn backing_size(target: &Arc<AnyTarget>, st: &DeviceState) -> Result<u64, String> {
    let id = st.id;
    match target.backing_size() {
        Ok(Some(n)) if n < st.size => Err(format!(
            "the backing of device {id} holds {}, less than the device's {}: nothing to grow into",
            format_size(n),
            format_size(st.size)
        )),
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(format!(
            "-t {} has no backing to follow: give the new size (--size)",
            st.target.kind
        )),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Err(cannot_resize(st)),
        Err(e) => Err(format!(
            "cannot read the size of device {id}'s backing: {e}"
        )),
    }
}

/// The refusal for a target that cannot be resized.
fn cannot_resize(st: &DeviceState) -> String {
    format!(
        "-t {} cannot be resized online (resize supports -t file, mem, null, nbd, rbd)",
        st.target.kind
    )
}

/// Grow the target, record the size, then tell the driver: in that order, so the kernel never
/// sends a request beyond what the target serves, and a daemon recovering the device after a
/// crash in between finds the state file agreeing with the target.
fn resize(
    dev: &mut Device,
    target: &Arc<AnyTarget>,
    st: &mut DeviceState,
    size: u64,
) -> Result<(), String> {
    let id = st.id;
    if dev.info.flags & ublk::uapi::UBLK_F_UPDATE_SIZE == 0 {
        return Err(not_supported(id));
    }
    if size < st.size {
        return Err(format!(
            "device {id} is {} and shrinking is not supported (it would cut off data)",
            format_size(st.size)
        ));
    }
    if !size.is_multiple_of(512) {
        return Err(format!("size {size} is not a multiple of 512"));
    }
    if size == st.size {
        return Ok(());
    }
    target.resize(size).map_err(|e| match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => cannot_resize(st),
        _ => e.to_string(),
    })?;
    let old = st.size;
    st.size = size;
    // A target opened with an explicit size must open at the new one when recovered.
    if st.target.config.contains_key("size") {
        st.target.config.insert("size".into(), size.into());
    }
    if let Err(e) = state::save(st) {
        tracing::warn!("device {id}: cannot write the state file: {e}");
    }
    dev.update_size(size)
        .map_err(|e| format!("UPDATE_SIZE of device {id}: {e}"))?;
    tracing::info!(
        "device {id} resized from {} to {}",
        format_size(old),
        format_size(size)
    );
    Ok(())
}

/// The refusal for a device (or kernel) without UBLK_F_UPDATE_SIZE.
pub fn not_supported(id: u32) -> String {
    format!(
        "device {id} cannot be resized: the kernel's ublk driver lacks UPDATE_SIZE (Linux 6.16+), or the device was created without it"
    )
}
