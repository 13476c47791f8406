//! What a new device is asked to be, and why it could not be had (one line for the user).

use std::io;

use crate::bufmode::BufMode;
use crate::ctrl::ControlError;
use crate::queue::QueueTuning;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Wanted device id; `None` lets the driver pick.
    pub dev_id: Option<u32>,
    pub queues: u16,
    pub depth: u16,
    pub max_io: u32,
    /// Where request data lives; `None` picks user copy (copying nothing) for a target that
    /// ignores data, zero copy when the driver offers UBLK_F_AUTO_BUF_REG and the target never
    /// touches bytes with the CPU, else copy.
    pub mode: Option<BufMode>,
    /// Batch I/O commands (UBLK_F_BATCH_IO); `None` uses them where the driver offers them.
    pub batch: Option<bool>,
    /// Extra UBLK_F_* flags (recovery modes).
    pub extra_flags: u64,
    /// Ask for an unprivileged device (UBLK_F_UNPRIVILEGED_DEV, Linux 6.3+): created by a
    /// non-root user, who alone can serve, open and manage it. The driver allows it only the
    /// copy buffer mode and no recovery.
    pub unprivileged: bool,
    /// A file to register for shared-memory zero copy (UBLK_F_SHMEM_ZC, Linux 7.1+); see
    /// `shmem`.
    pub shmem: Option<std::path::PathBuf>,
    pub tuning: QueueTuning,
}

/// Why a device could not be created; messages are one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("device id {0} is already in use")]
    IdInUse(u32),
    #[error("the kernel's ublk driver lacks {0}: {1}")]
    Unsupported(String, String),
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("invalid option: {0}")]
    Invalid(String),
    /// The system around the driver did not do its part (udev, for an unprivileged device).
    #[error("{0}")]
    System(String),
    #[error(
        "device {id}: queue {queues} still busy {secs}s after STOP_DEV (stuck in the target or the kernel); leaving it and the device: the char device closes when this process exits, then 'ublkd del -n {id}' removes the device"
    )]
    Stuck { id: u32, queues: String, secs: u64 },
}
