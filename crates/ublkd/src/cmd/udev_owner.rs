//! Hidden `ublkd udev-owner NAME`: run by udev as root (contrib/udev/70-ublkd-unprivileged.rules)
//! when an unprivileged device's node appears. The driver creates /dev/ublkcN and /dev/ublkbN
//! root's; this hands them to the user who added the device (owner_uid/owner_gid, which the
//! driver records at ADD_DEV and GET_DEV_INFO2 reports), mode 0600. A privileged device's nodes
//! are left alone.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::ExitCode;

use clap::Args;
use ublk::uapi::UBLK_F_UNPRIVILEGED_DEV;

#[derive(Debug, Args)]
pub struct UdevOwnerArgs {
    /// The node's kernel name (udev's %k): ublkcN, ublkbN or a partition ublkbNpM.
    name: String,
}

/// The device id in a node name; `None` for anything that is not a ublk node's name (so no
/// path outside /dev can be made of it).
fn device_id(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("ublkc")
        .or_else(|| name.strip_prefix("ublkb"))?;
    let (id, part) = match rest.split_once('p') {
        Some((id, part)) => (id, Some(part)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || part.is_some_and(|p| !digits(p) || name.starts_with("ublkc")) {
        return None;
    }
    id.parse().ok()
}

pub fn run(a: UdevOwnerArgs) -> ExitCode {
    let Some(id) = device_id(&a.name) else {
        return crate::fail(format!("{} is not a ublk device node", a.name));
    };
    let (_, info) = match crate::cmd::open_device(id) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    if info.flags & UBLK_F_UNPRIVILEGED_DEV == 0 {
        return ExitCode::SUCCESS;
    }
    let path = format!("/dev/{}", a.name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_block_device() || m.file_type().is_char_device() => {}
        Ok(_) => return crate::fail(format!("{path} is not a device node")),
        Err(e) => return crate::fail(format!("{path}: {e}")),
    }
    if let Err(e) = std::os::unix::fs::chown(&path, Some(info.owner_uid), Some(info.owner_gid)) {
        return crate::fail(format!("chown {path}: {e}"));
    }
    // Owner only: the driver lets nobody else open an unprivileged disk anyway.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        return crate::fail(format!("chmod {path}: {e}"));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::device_id;

    #[test]
    fn only_ublk_node_names_are_accepted() {
        assert_eq!(device_id("ublkc0"), Some(0));
        assert_eq!(device_id("ublkb12"), Some(12));
        assert_eq!(device_id("ublkb3p1"), Some(3));
        for bad in [
            "ublk-control",
            "ublkc",
            "ublkc3p1",
            "ublkb3p",
            "ublkb../x",
            "sda",
            "ublkb1x",
        ] {
            assert_eq!(device_id(bad), None, "{bad}");
        }
    }
}
