//! A device's persistent identity: the name the user gives it (`add --name`) and the serial
//! generated when it is created. Both live in the state file, survive `recover` and `upgrade`,
//! and are what udev links under /dev/disk/by-id (`ublkd udev-id`, contrib/udev).

use std::io::Read;

/// Check a `--name`: 1-64 of `[A-Za-z0-9._-]`, not starting with a dot or dash (it becomes
/// part of file names: /dev/disk/by-id/ublk-NAME, ublkd@NAME.service). Errors are one line.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("--name '{name}' must be 1 to 64 characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "--name '{name}' contains '{c}': use letters, digits, '.', '_' and '-'"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!("--name '{name}' must not start with '.' or '-'"));
    }
    Ok(())
}

/// A new serial: 16 hex digits from the kernel's random source (unique in practice, so two
/// devices never claim the same by-id link).
pub fn new_serial() -> String {
    let mut b = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !filled {
        // Still distinct per process and moment, if not unpredictable.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ ((std::process::id() as u64) << 40)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Ask udev to look at the disk and its partitions again (a "change" uevent), as
/// `udevadm trigger` would: for the links that need the state file, written after the disk
/// appeared. Best effort: without udev nobody listens.
pub fn announce(id: u32) {
    let dir = std::path::PathBuf::from(format!("/sys/class/block/ublkb{id}"));
    let mut nodes = vec![dir.clone()];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let part = format!("ublkb{id}p");
        nodes.extend(
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&part))
                .map(|e| e.path()),
        );
    }
    for n in nodes {
        let _ = std::fs::write(n.join("uevent"), "change");
    }
}

/// The live device (one the driver knows) called `name`, if any.
pub fn device_named(name: &str) -> Option<u32> {
    crate::cmd::list::device_ids()
        .into_iter()
        .find(|id| crate::state::load(*id).is_some_and(|s| s.name.as_deref() == Some(name)))
}

/// `--name` checked and free, in one line if not.
pub fn check_new_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    match device_named(name) {
        Some(id) => Err(format!("the name '{name}' is taken by device {id}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_in_one_line() {
        for ok in ["db", "vm-1.disk_2", "A", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for (bad, want) in [
            ("", "1 to 64 characters"),
            (&"x".repeat(65), "1 to 64 characters"),
            ("a/b", "contains '/'"),
            ("a b", "contains ' '"),
            ("é", "contains 'é'"),
            (".hidden", "must not start"),
            ("-x", "must not start"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn serials_are_16_hex_digits_and_differ() {
        let (a, b) = (new_serial(), new_serial());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
