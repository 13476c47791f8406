//! Hidden `ublkd udev-id KERNEL_NAME`: what udev needs to name a disk (contrib/udev/60-ublkd.rules
//! runs it with IMPORT{program}). For `ublkb0` or a partition `ublkb0p1` it prints the device's
//! identity from its state file as udev properties:
//!
//! ```text
//! UBLKD_ID=0
//! UBLKD_NAME=db
//! UBLKD_SERIAL=5f0c2a9e41d7b388
//! ID_SERIAL=5f0c2a9e41d7b388
//! ```
//! A disk that is not ours or has no state file yet gets no properties (exit 0): the daemon
//! asks udev to look again once its state file is written.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct UdevIdArgs {
    /// The kernel's name of the disk or partition (udev's %k), or its /dev path.
    pub kernel_name: String,
}

/// The device id in `ublkbN` or `ublkbNpM` (with or without /dev/).
pub fn device_id(kernel_name: &str) -> Option<u32> {
    let rest = kernel_name
        .trim_start_matches("/dev/")
        .strip_prefix("ublkb")?;
    let digits = rest.split('p').next()?;
    let tail = &rest[digits.len()..];
    let partition_ok = tail.is_empty()
        || tail
            .strip_prefix('p')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (partition_ok && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// The properties for device `id`, one `KEY=value` per line.
pub fn properties(id: u32, st: Option<&crate::state::DeviceState>) -> String {
    let Some(st) = st else {
        return String::new();
    };
    let mut out = format!("UBLKD_ID={id}\n");
    if let Some(n) = &st.name {
        out += &format!("UBLKD_NAME={n}\n");
    }
    if let Some(s) = &st.serial {
        out += &format!("UBLKD_SERIAL={s}\nID_SERIAL={s}\n");
    }
    out
}

pub fn run(a: UdevIdArgs) -> ExitCode {
    let Some(id) = device_id(&a.kernel_name) else {
        return crate::fail(format!("'{}' is not a ublk disk name", a.kernel_name));
    };
    let text = properties(id, crate::state::load(id).as_ref());
    crate::out::print(text.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_give_the_device_id() {
        assert_eq!(device_id("ublkb0"), Some(0));
        assert_eq!(device_id("ublkb12p3"), Some(12));
        assert_eq!(device_id("/dev/ublkb7"), Some(7));
        for bad in [
            "ublkc0",
            "ublkb",
            "ublkbp1",
            "ublkb1p",
            "ublkb1x",
            "sda1",
            "ublkb1p2p3",
        ] {
            assert_eq!(device_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn properties_come_from_the_state_file() {
        let mut st: crate::state::DeviceState = serde_json::from_value(serde_json::json!({
            "id": 3, "pid": 1, "target": {"type": "null", "size": 4096}, "queues": 1,
            "depth": 1, "max_io": 4096, "mode": "copy", "size": 4096,
            "block_device": "/dev/ublkb3", "log": "/x"
        }))
        .unwrap();
        assert_eq!(properties(3, None), "");
        assert_eq!(properties(3, Some(&st)), "UBLKD_ID=3\n");
        st.name = Some("db".into());
        st.serial = Some("00ff".into());
        assert_eq!(
            properties(3, Some(&st)),
            "UBLKD_ID=3\nUBLKD_NAME=db\nUBLKD_SERIAL=00ff\nID_SERIAL=00ff\n"
        );
    }
}
