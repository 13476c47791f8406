//! The options that define a device (`add`, and the daemon it starts): target, queues, depth,
//! buffers, I/O commands, recovery; and what of them a recovering daemon needs again.

use std::time::Duration;

use clap::Args;
use targets::size::parse_size;
use ublk::{BufMode, DeviceOptions, QueueTuning};

use crate::args::TargetArgs;

/// Everything that defines a device; shared by `add` and the daemon.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Hardware queues (default: one per CPU, at most 4).
    #[arg(short = 'q', long)]
    pub queues: Option<u16>,
    /// Queue depth, 1..=4096.
    #[arg(short = 'd', long, default_value_t = 128)]
    pub depth: u16,
    /// Device id (default: the first free one).
    #[arg(short = 'n', long = "number")]
    pub id: Option<u32>,
    /// A name for the device, unique among live devices (1-64 of A-Z a-z 0-9 . _ -): kept
    /// across recover/upgrade, shown by list, linked by udev as /dev/disk/by-id/ublk-NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Largest single I/O (K/M suffixes), a power of two from 4K to 32M.
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    pub max_io: u64,
    /// Where request data lives: copy (the driver copies into per-tag buffers), user-copy (we
    /// copy with pread/pwrite on the char device, UBLK_F_USER_COPY), zero-copy (the request's
    /// own pages go to the target's I/O, UBLK_F_AUTO_BUF_REG, Linux 6.17+; file and null
    /// targets), or auto: zero-copy where the kernel and target allow it, else copy.
    #[arg(long, value_enum, default_value_t = Buffers::Auto)]
    pub buffers: Buffers,
    /// How requests reach the daemon: batch (UBLK_F_BATCH_IO, Linux 7.0+: one multishot fetch
    /// delivers many requests, one command commits many results), per-tag (one fetch/commit
    /// command per request), or auto: batch where the kernel offers it.
    #[arg(long, value_enum, default_value_t = IoCmds::Auto)]
    pub io_cmds: IoCmds,
    /// Same as --buffers user-copy.
    #[arg(long, conflicts_with = "buffers")]
    pub user_copy: bool,
    /// Spin this many microseconds for completions before sleeping (lower qd1 latency, more CPU).
    #[arg(long, value_name = "USEC", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub busy_poll_us: Option<u64>,
    /// Pin each queue thread to the CPUs the driver maps to its queue (default: let the
    /// scheduler place them, which measured faster for single-job workloads).
    #[arg(long)]
    pub pin_queues: bool,
    /// What the driver does when the daemon dies: keep the device and reissue in-flight I/O to a
    /// recovering daemon (reissue), keep it and fail in-flight I/O (on), keep it but fail all I/O
    /// until recovery (fail-io, Linux 6.13+), or remove it (off). Default: reissue, or off for
    /// an unprivileged device (the driver never recovers one).
    #[arg(long, value_enum)]
    pub recovery: Option<Recovery>,
    /// Create the device as the calling non-root user (UBLK_F_UNPRIVILEGED_DEV, Linux 6.3+):
    /// only that user can serve, open and manage it. Needs the udev rules in contrib/udev
    /// (README, "Unprivileged devices"); copy buffers only, no recovery.
    #[arg(long)]
    pub unprivileged: bool,
    /// Register this file for shared-memory zero copy (UBLK_F_SHMEM_ZC, Linux 7.1+): an
    /// application that maps the same file (hugetlbfs, tmpfs, /dev/shm) and does O_DIRECT I/O
    /// from it has those requests served from its own pages, with no copy. Other requests are
    /// served as usual. A multiple of the page size, at most 4 GiB; needs --recovery off and copy
    /// or user-copy buffers.
    #[arg(long, value_name = "PATH")]
    pub shmem: Option<std::path::PathBuf>,
}

/// Queue thread tuning from the options a device was created with (kept in its state file).
pub(crate) fn queue_tuning(busy_poll_us: Option<u64>, pin_queues: bool) -> QueueTuning {
    QueueTuning {
        busy_poll: busy_poll_us.map(Duration::from_micros),
        pin: pin_queues,
    }
}

/// `--buffers`: a buffer mode, or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Buffers {
    Auto,
    Copy,
    UserCopy,
    ZeroCopy,
}

/// `--io-cmds`: batch or per-tag I/O commands, or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoCmds {
    Auto,
    Batch,
    PerTag,
}

/// Recovery policy (UBLK_F_USER_RECOVERY and friends).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    Reissue,
    On,
    FailIo,
    Off,
}

impl Recovery {
    pub fn flags(self) -> u64 {
        use ublk::uapi::*;
        match self {
            Recovery::Reissue => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE,
            Recovery::On => UBLK_F_USER_RECOVERY,
            Recovery::FailIo => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO,
            Recovery::Off => 0,
        }
    }
}

impl DeviceArgs {
    /// The recovery policy asked for, or the default.
    pub fn recovery(&self) -> Recovery {
        self.recovery.unwrap_or(if self.unprivileged {
            Recovery::Off
        } else {
            Recovery::Reissue
        })
    }

    /// Whether this user may create the device as asked: root's devices are always privileged
    /// (the driver drops UBLK_F_UNPRIVILEGED_DEV for CAP_SYS_ADMIN), and anyone else's must be
    /// unprivileged.
    pub fn check_user(&self) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match (root, self.unprivileged) {
            (true, true) => Err("--unprivileged is for non-root users: root's devices are always privileged".into()),
            (false, false) => Err("only root can add a privileged device: add --unprivileged (README, \"Unprivileged devices\")".into()),
            _ => Ok(()),
        }
    }

    pub fn options(&self) -> Result<DeviceOptions, String> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let max_io = u32::try_from(self.max_io)
            .map_err(|_| format!("--max-io {} is too large", self.max_io))?;
        if self.depth == 0 || self.depth > 4096 {
            return Err(format!("--depth {} is outside 1..=4096", self.depth));
        }
        if let Some(0) = self.queues {
            return Err("--queues must be at least 1".into());
        }
        Ok(DeviceOptions {
            dev_id: self.id,
            queues: self.queues.unwrap_or(cpus.min(4) as u16),
            depth: self.depth,
            max_io,
            mode: match (self.user_copy, self.buffers) {
                (true, _) | (_, Buffers::UserCopy) => Some(BufMode::UserCopy),
                (_, Buffers::Copy) => Some(BufMode::Copy),
                (_, Buffers::ZeroCopy) => Some(BufMode::ZeroCopy),
                (_, Buffers::Auto) => None,
            },
            batch: match self.io_cmds {
                IoCmds::Auto => None,
                IoCmds::Batch => Some(true),
                IoCmds::PerTag => Some(false),
            },
            extra_flags: self.recovery().flags(),
            unprivileged: self.unprivileged,
            shmem: self.shmem.clone(),
            tuning: queue_tuning(self.busy_poll_us, self.pin_queues),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        d: DeviceArgs,
    }

    /// Target options sit beside the device's own: the rbd target's `--id` (a Ceph client) is
    /// not the device number (`-n/--number`, clap id `id`).
    #[test]
    fn target_options_do_not_collide_with_device_options() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "ublkd", "-t", "rbd", "--image", "rbd/disk", "--id", "host-a", "-n", "3",
        ])
        .unwrap();
        assert_eq!(c.d.id, Some(3));
        let s = c.d.target.to_spec().unwrap();
        assert_eq!(s.config["id"], "host-a");
        assert_eq!(s.config["image"], "rbd/disk");
    }
}
