//! Where request data lives (docs/design.md, "Buffer modes"), and the flag that asks for it.

use crate::uapi::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BufMode {
    /// The driver copies between the request and our per-tag buffer.
    Copy,
    /// We copy with pread/pwrite on the char device (UBLK_F_USER_COPY).
    UserCopy,
    /// Nobody copies (UBLK_F_AUTO_BUF_REG): the driver registers each request's pages in the
    /// queue ring's fixed-buffer table at slot `tag`, and the target moves them with fixed-buffer
    /// io_uring ops. Only for targets that never touch the bytes with the CPU.
    ZeroCopy,
}

impl BufMode {
    pub fn name(self) -> &'static str {
        match self {
            BufMode::Copy => "copy",
            BufMode::UserCopy => "user-copy",
            BufMode::ZeroCopy => "zero-copy",
        }
    }

    /// The UBLK_F_* flag that asks the driver for this mode (copy needs none).
    pub fn flag(self) -> u64 {
        match self {
            BufMode::Copy => 0,
            BufMode::UserCopy => UBLK_F_USER_COPY,
            BufMode::ZeroCopy => UBLK_F_AUTO_BUF_REG,
        }
    }

    /// The mode a device was created with, from its flags.
    pub fn from_flags(flags: u64) -> BufMode {
        // Zero copy first: a zero-copy device may carry USER_COPY too (shallow inline).
        [BufMode::ZeroCopy, BufMode::UserCopy]
            .into_iter()
            .find(|m| flags & m.flag() != 0)
            .unwrap_or(BufMode::Copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_modes_round_trip_through_device_flags() {
        for m in [BufMode::Copy, BufMode::UserCopy, BufMode::ZeroCopy] {
            let flags = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY | m.flag();
            assert_eq!(BufMode::from_flags(flags), m);
        }
        assert_eq!(
            BufMode::from_flags(UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY),
            BufMode::ZeroCopy
        );
    }
}
