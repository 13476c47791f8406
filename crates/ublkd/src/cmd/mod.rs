//! One file per subcommand.

pub mod add;
pub mod create;
pub mod del;
pub mod docs;
pub mod export;
pub mod features;
pub mod list;
pub mod metrics;
pub mod recover;
pub mod resize;
pub mod stats;
pub mod top;
pub mod udev_id;
pub mod udev_owner;
pub mod upgrade;
pub mod vhost;

/// A control command on device `id` failed: one line for the user.
pub fn device_error(id: u32, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENODEV) => format!("device {id} does not exist"),
        // The driver checks an unprivileged device's path, a privileged one's CAP_SYS_ADMIN.
        Some(libc::EACCES | libc::EPERM) => {
            format!(
                "device {id} is not yours (permission denied): only its owner and root may manage it"
            )
        }
        _ => format!("device {id}: {e}"),
    }
}

/// The control device and device `id`'s info from the driver, or the one line to fail with.
pub fn open_device(id: u32) -> Result<(ublk::Control, ublk::uapi::ublksrv_ctrl_dev_info), String> {
    let mut ctrl = ublk::Control::open().map_err(|e| e.to_string())?;
    let info = ctrl.get_dev_info(id).map_err(|e| device_error(id, &e))?;
    Ok((ctrl, info))
}

/// Whether a control command failed because the device is someone else's.
pub fn not_ours(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}
