//! Which flags a new device asks the driver for: the buffer mode, batch commands, and the
//! optional features it gets where the kernel has them. Decided from what the user asked, what
//! the target can do and what the kernel offers (`None`: too old to say, before Linux 6.5).

use targets::Caps;

use crate::bufmode::BufMode;
use crate::features;
use crate::options::{DeviceError, DeviceOptions};
use crate::uapi::*;

/// The buffer mode and the UBLK_F_* flags for ADD_DEV.
pub(crate) fn device_flags(
    opts: &DeviceOptions,
    caps: Caps,
    have: Option<u64>,
) -> Result<(BufMode, u64), DeviceError> {
    if opts.mode == Some(BufMode::ZeroCopy) && caps.needs_cpu_access {
        return Err(DeviceError::Invalid(
            "this target reads and writes request data with the CPU, so it cannot use zero-copy buffers (use copy or user-copy)".into(),
        ));
    }
    let offers = |f: u64| have.is_some_and(|h| h & f != 0);
    if opts.shmem.is_some() {
        check_shmem(opts, have)?;
    }
    if opts.unprivileged {
        return unprivileged_flags(opts, have).map(|(m, f)| (m, f | shmem_flag(opts)));
    }
    // A device with a shared-memory buffer serves the requests that miss it by copy: zero copy
    // would register every request's pages, matched or not.
    let auto_copy = opts.shmem.is_some();
    let mode = opts.mode.unwrap_or({
        if auto_copy {
            BufMode::Copy
        } else if offers(UBLK_F_AUTO_BUF_REG) && !caps.needs_cpu_access {
            // The request's own pages go to the target. Also for a target that ignores data:
            // a write moves nothing, and a read's zeroes come from one fixed-buffer read of
            // /dev/zero straight into the request's pages. Measured against user copy (a
            // memset plus a pwrite of the zeroes per read) in one 7.3 boot: 2.1x on null
            // randread qd64/1 job, 1.0-1.3x on the other qd64 rows (docs/benchmarks.md,
            // "Beside rublk").
            BufMode::ZeroCopy
        } else if offers(UBLK_F_USER_COPY) && caps.ignores_data {
            // The driver leaves request pages alone in user-copy mode: writes need no copy,
            // and a read costs one copy of the zeroes the target wrote.
            BufMode::UserCopy
        } else {
            BufMode::Copy
        }
    });
    let mut flags = UBLK_F_CMD_IOCTL_ENCODE | opts.extra_flags | mode.flag() | shmem_flag(opts);
    // Zero copy chosen for a target that serves CPU buffers inline (a file on tmpfs): ask for
    // user copy too, so a request that finds its queue idle can skip the target's worker-thread
    // hand-off (QueueConfig::shallow_inline).
    if opts.mode.is_none()
        && mode == BufMode::ZeroCopy
        && caps.inline_io
        && offers(UBLK_F_USER_COPY)
    {
        flags |= UBLK_F_USER_COPY;
    }
    if opts.batch.unwrap_or(offers(UBLK_F_BATCH_IO)) {
        flags |= UBLK_F_BATCH_IO;
    }
    let Some(have) = have else {
        return Ok((mode, flags));
    };
    let missing = flags & !have;
    if missing != 0 {
        return Err(DeviceError::Unsupported(
            features::names(missing).join(", "),
            format!("this kernel offers {}", features::names(have).join(" ")),
        ));
    }
    // A recoverable device can also be quiesced for a live upgrade where the kernel allows it
    // (Linux 6.16+); nothing is lost without it, `upgrade` just refuses.
    if flags & UBLK_F_USER_RECOVERY != 0 && have & UBLK_F_QUIESCE != 0 {
        flags |= UBLK_F_QUIESCE;
    }
    // Lets `ublkd resize` change the size of a live disk (Linux 6.16+); without it, resize
    // refuses.
    flags |= have & UBLK_F_UPDATE_SIZE;
    // Lets `del` refuse a busy device race-free (TRY_STOP_DEV, Linux 7.0+).
    flags |= have & UBLK_F_SAFE_STOP_DEV;
    Ok((mode, flags))
}

fn shmem_flag(opts: &DeviceOptions) -> u64 {
    if opts.shmem.is_some() {
        UBLK_F_SHMEM_ZC
    } else {
        0
    }
}

/// What a shared-memory buffer needs: the driver's SHMEM_ZC, a mode that does not register
/// every request's pages, and no recovery (a recovering daemon would have to map the same file
/// again; not built).
fn check_shmem(opts: &DeviceOptions, have: Option<u64>) -> Result<(), DeviceError> {
    if opts.mode == Some(BufMode::ZeroCopy) {
        return Err(DeviceError::Invalid(
            "--shmem works with copy or user-copy buffers, not zero-copy".into(),
        ));
    }
    if opts.extra_flags & UBLK_F_USER_RECOVERY != 0 {
        return Err(DeviceError::Invalid(
            "--shmem needs --recovery off (a recovering daemon does not map the buffer again)"
                .into(),
        ));
    }
    // `None` (no GET_FEATURES, or a check before the driver is asked): ADD_DEV's grant check
    // refuses it.
    if have.is_some_and(|h| h & UBLK_F_SHMEM_ZC == 0) {
        return Err(DeviceError::Unsupported(
            "SHMEM_ZC".into(),
            "--shmem needs Linux 7.1+".into(),
        ));
    }
    Ok(())
}

/// An unprivileged device: the driver refuses it user copy, zero copy and AUTO_BUF_REG (a
/// server could leave request pages unfilled and leak kernel memory) and silently drops the
/// recovery flags (a server nobody trusts must not hold the disk's I/O), so copy is the one
/// buffer mode and recovery is refused here rather than lost there.
fn unprivileged_flags(
    opts: &DeviceOptions,
    have: Option<u64>,
) -> Result<(BufMode, u64), DeviceError> {
    let offers = |f: u64| have.is_some_and(|h| h & f != 0);
    if let Some(m @ (BufMode::UserCopy | BufMode::ZeroCopy)) = opts.mode {
        return Err(DeviceError::Invalid(format!(
            "--buffers {} is not allowed for an unprivileged device (the driver allows it only copy)",
            m.name()
        )));
    }
    if opts.extra_flags & UBLK_F_USER_RECOVERY != 0 {
        return Err(DeviceError::Invalid(
            "an unprivileged device cannot be recovered (the driver drops recovery for it): add --recovery off".into(),
        ));
    }
    if have.is_some() && !offers(UBLK_F_UNPRIVILEGED_DEV) {
        return Err(DeviceError::Unsupported(
            "UNPRIVILEGED_DEV".into(),
            "unprivileged devices need Linux 6.3+".into(),
        ));
    }
    let mut flags = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV | opts.extra_flags;
    if opts.batch.unwrap_or(offers(UBLK_F_BATCH_IO)) {
        if have.is_some() && !offers(UBLK_F_BATCH_IO) {
            return Err(DeviceError::Unsupported(
                "BATCH_IO".into(),
                format!(
                    "this kernel offers {}",
                    features::names(have.unwrap_or(0)).join(" ")
                ),
            ));
        }
        flags |= UBLK_F_BATCH_IO;
    }
    if let Some(h) = have {
        flags |= h & UBLK_F_SAFE_STOP_DEV;
    }
    Ok((BufMode::Copy, flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueTuning;

    fn opts(mode: Option<BufMode>, batch: Option<bool>, extra: u64) -> DeviceOptions {
        DeviceOptions {
            dev_id: None,
            queues: 1,
            depth: 1,
            max_io: 4096,
            mode,
            batch,
            extra_flags: extra,
            unprivileged: false,
            shmem: None,
            tuning: QueueTuning::default(),
        }
    }

    const K73: u64 = UBLK_F_USER_COPY
        | UBLK_F_AUTO_BUF_REG
        | UBLK_F_BATCH_IO
        | UBLK_F_QUIESCE
        | UBLK_F_SAFE_STOP_DEV
        | UBLK_F_USER_RECOVERY
        | UBLK_F_USER_RECOVERY_REISSUE
        | UBLK_F_CMD_IOCTL_ENCODE;
    const K612: u64 = UBLK_F_USER_COPY
        | UBLK_F_USER_RECOVERY
        | UBLK_F_USER_RECOVERY_REISSUE
        | UBLK_F_CMD_IOCTL_ENCODE;

    fn null() -> Caps {
        Caps {
            ignores_data: true,
            ..Caps::default()
        }
    }
    fn mem() -> Caps {
        Caps {
            needs_cpu_access: true,
            ..Caps::default()
        }
    }
    fn tmpfs_file() -> Caps {
        Caps {
            inline_io: true,
            ..Caps::default()
        }
    }

    #[test]
    fn auto_takes_the_cheapest_mode_the_kernel_and_target_allow() {
        let o = opts(None, None, 0);
        assert_eq!(
            device_flags(&o, null(), Some(K73)).unwrap().0,
            BufMode::ZeroCopy
        );
        // Without AUTO_BUF_REG (6.12), user copy: writes to null still move nothing.
        assert_eq!(
            device_flags(&o, null(), Some(K612)).unwrap().0,
            BufMode::UserCopy
        );
        assert_eq!(device_flags(&o, mem(), Some(K73)).unwrap().0, BufMode::Copy);
        let (m, f) = device_flags(&o, Caps::default(), Some(K73)).unwrap();
        assert_eq!(m, BufMode::ZeroCopy);
        assert_eq!(f & UBLK_F_USER_COPY, 0);
        assert_ne!(f & UBLK_F_BATCH_IO, 0);
        let (m, f) = device_flags(&o, tmpfs_file(), Some(K73)).unwrap();
        assert_eq!(m, BufMode::ZeroCopy);
        assert_ne!(
            f & UBLK_F_USER_COPY,
            0,
            "shallow inline needs user copy too"
        );
        let (m, f) = device_flags(&o, Caps::default(), Some(K612)).unwrap();
        assert_eq!(m, BufMode::Copy);
        assert_eq!(f & UBLK_F_BATCH_IO, 0);
        assert_eq!(
            device_flags(&o, Caps::default(), None).unwrap().0,
            BufMode::Copy
        );
    }

    #[test]
    fn asking_for_what_cannot_work_is_refused() {
        let e = device_flags(&opts(Some(BufMode::ZeroCopy), None, 0), mem(), Some(K73));
        assert!(matches!(e, Err(DeviceError::Invalid(_))));
        let e = device_flags(&opts(Some(BufMode::ZeroCopy), None, 0), null(), Some(K612));
        assert!(matches!(e, Err(DeviceError::Unsupported(..))));
        let e = device_flags(&opts(None, Some(true), 0), null(), Some(K612));
        assert!(matches!(e, Err(DeviceError::Unsupported(..))));
    }

    #[test]
    fn recoverable_devices_can_be_quiesced_where_offered() {
        let rec = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
        let (_, f) = device_flags(&opts(None, None, rec), null(), Some(K73)).unwrap();
        assert_ne!(f & UBLK_F_QUIESCE, 0);
        let (_, f) = device_flags(&opts(None, None, 0), null(), Some(K73)).unwrap();
        assert_eq!(f & UBLK_F_QUIESCE, 0);
        let (_, f) = device_flags(&opts(None, None, rec), null(), Some(K612)).unwrap();
        assert_eq!(f & UBLK_F_QUIESCE, 0);
    }

    #[test]
    fn unprivileged_devices_get_copy_and_no_recovery() {
        let k = K73 | UBLK_F_UNPRIVILEGED_DEV;
        let mut o = opts(None, None, 0);
        o.unprivileged = true;
        for caps in [null(), mem(), Caps::default(), tmpfs_file()] {
            let (m, f) = device_flags(&o, caps, Some(k)).unwrap();
            assert_eq!(m, BufMode::Copy);
            assert_ne!(f & UBLK_F_UNPRIVILEGED_DEV, 0);
            assert_eq!(
                f & (UBLK_F_USER_COPY | UBLK_F_AUTO_BUF_REG | UBLK_F_QUIESCE),
                0
            );
        }
        for m in [BufMode::UserCopy, BufMode::ZeroCopy] {
            o.mode = Some(m);
            let e = device_flags(&o, null(), Some(k)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("--buffers {} is not allowed", m.name())),
                "{e}"
            );
        }
        o.mode = Some(BufMode::Copy);
        o.extra_flags = UBLK_F_USER_RECOVERY;
        let e = device_flags(&o, null(), Some(k)).unwrap_err().to_string();
        assert!(e.contains("--recovery off"), "{e}");
        o.extra_flags = 0;
        let e = device_flags(&o, null(), Some(K73)).unwrap_err().to_string();
        assert!(e.contains("Linux 6.3+"), "{e}");
        // Before GET_FEATURES (6.5) the driver is asked anyway, without batch commands.
        let (_, f) = device_flags(&o, null(), None).unwrap();
        assert_eq!(f, UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV);
    }

    #[test]
    fn safe_stop_where_offered() {
        let (_, f) = device_flags(&opts(None, None, 0), null(), Some(K73)).unwrap();
        assert_ne!(f & UBLK_F_SAFE_STOP_DEV, 0);
        let (_, f) = device_flags(&opts(None, None, 0), null(), Some(K612)).unwrap();
        assert_eq!(f & UBLK_F_SAFE_STOP_DEV, 0);
    }

    #[test]
    fn a_shared_memory_buffer_gets_copy_and_shmem_zc_or_a_one_line_refusal() {
        let with_shmem = |mode, extra, unprivileged| DeviceOptions {
            shmem: Some("/dev/shm/buf".into()),
            unprivileged,
            ..opts(mode, None, extra)
        };
        let k = K73 | UBLK_F_SHMEM_ZC | UBLK_F_UNPRIVILEGED_DEV;
        // auto: copy (zero copy would register every request's pages), with SHMEM_ZC.
        let (m, f) = device_flags(&with_shmem(None, 0, false), tmpfs_file(), Some(k)).unwrap();
        assert_eq!(m, BufMode::Copy);
        assert_ne!(f & UBLK_F_SHMEM_ZC, 0);
        let (m, f) = device_flags(
            &with_shmem(Some(BufMode::UserCopy), 0, false),
            null(),
            Some(k),
        )
        .unwrap();
        assert_eq!(m, BufMode::UserCopy);
        assert_ne!(f & UBLK_F_SHMEM_ZC, 0);
        // Unprivileged devices may have it too (the driver offers it to them).
        let (m, f) = device_flags(&with_shmem(None, 0, true), null(), Some(k)).unwrap();
        assert_eq!(m, BufMode::Copy);
        assert_ne!(f & UBLK_F_SHMEM_ZC, 0);
        assert_ne!(f & UBLK_F_UNPRIVILEGED_DEV, 0);
        let refused =
            |o: DeviceOptions, have| device_flags(&o, null(), have).unwrap_err().to_string();
        assert!(
            refused(with_shmem(Some(BufMode::ZeroCopy), 0, false), Some(k))
                .contains("not zero-copy")
        );
        let rec = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
        assert!(refused(with_shmem(None, rec, false), Some(k)).contains("--recovery off"));
        assert!(refused(with_shmem(None, 0, false), Some(K612)).contains("lacks SHMEM_ZC"));
        // Without the driver's answer (a check before it is asked), ADD_DEV's grant decides.
        assert!(device_flags(&with_shmem(None, 0, false), null(), None).is_ok());
        // No buffer, no flag.
        let (_, f) = device_flags(&opts(None, None, 0), null(), Some(k)).unwrap();
        assert_eq!(f & UBLK_F_SHMEM_ZC, 0);
    }
}
