//! Feature flags by name, for `ublkd features` and for error messages.

use crate::uapi::*;

/// (flag, name) for every feature flag we know, lowest bit first.
pub const FEATURES: &[(u64, &str)] = &[
    (UBLK_F_SUPPORT_ZERO_COPY, "ZERO_COPY"),
    (UBLK_F_URING_CMD_COMP_IN_TASK, "URING_CMD_COMP_IN_TASK"),
    (UBLK_F_NEED_GET_DATA, "NEED_GET_DATA"),
    (UBLK_F_USER_RECOVERY, "USER_RECOVERY"),
    (UBLK_F_USER_RECOVERY_REISSUE, "USER_RECOVERY_REISSUE"),
    (UBLK_F_UNPRIVILEGED_DEV, "UNPRIVILEGED_DEV"),
    (UBLK_F_CMD_IOCTL_ENCODE, "CMD_IOCTL_ENCODE"),
    (UBLK_F_USER_COPY, "USER_COPY"),
    (UBLK_F_ZONED, "ZONED"),
    (UBLK_F_USER_RECOVERY_FAIL_IO, "USER_RECOVERY_FAIL_IO"),
    (UBLK_F_UPDATE_SIZE, "UPDATE_SIZE"),
    (UBLK_F_AUTO_BUF_REG, "AUTO_BUF_REG"),
    (UBLK_F_QUIESCE, "QUIESCE"),
    (UBLK_F_PER_IO_DAEMON, "PER_IO_DAEMON"),
    (UBLK_F_BUF_REG_OFF_DAEMON, "BUF_REG_OFF_DAEMON"),
    (UBLK_F_BATCH_IO, "BATCH_IO"),
    (UBLK_F_INTEGRITY, "INTEGRITY"),
    (UBLK_F_SAFE_STOP_DEV, "SAFE_STOP_DEV"),
    (UBLK_F_NO_AUTO_PART_SCAN, "NO_AUTO_PART_SCAN"),
    (UBLK_F_SHMEM_ZC, "SHMEM_ZC"),
    (UBLK_F_IO_DESC_SIZE, "IO_DESC_SIZE"),
];

/// Names of the set bits; unknown bits appear as `BIT_n`.
pub fn names(flags: u64) -> Vec<String> {
    (0..64)
        .filter(|b| flags & (1u64 << b) != 0)
        .map(|b| {
            let f = 1u64 << b;
            FEATURES
                .iter()
                .find(|(v, _)| *v == f)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| format!("BIT_{b}"))
        })
        .collect()
}

/// Device state name.
pub fn state_name(state: u16) -> &'static str {
    match state {
        UBLK_S_DEV_DEAD => "dead",
        UBLK_S_DEV_LIVE => "live",
        UBLK_S_DEV_QUIESCED => "quiesced",
        UBLK_S_DEV_FAIL_IO => "fail-io",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown_bits() {
        assert_eq!(
            names(UBLK_F_USER_COPY | UBLK_F_QUIESCE | (1 << 40)),
            vec!["USER_COPY", "QUIESCE", "BIT_40"]
        );
        assert!(names(0).is_empty());
    }
}
