//! SQE fields the `io-uring` crate's builders do not expose for `IORING_OP_URING_CMD`: the length
//! of the array a command points to, multishot, and the provided-buffer group.
//!
//! These only edit an entry, so they are safe; what they set is covered by the contract of
//! whoever submits it ([`crate::op::Op::submit`], [`crate::fs::uring_cmd16_array`], ...). A
//! larger `len` makes the kernel access more memory behind `addr`, and a buffer group lets it
//! write into those provided buffers, so the submitter must account for the patched fields.

use io_uring::squeue::Entry;

/// `sqe->uring_cmd_flags`: the command posts many completions (needs buffer select).
pub const IORING_URING_CMD_MULTISHOT: u32 = 1 << 1;

// Byte offsets in the 64-byte `struct io_uring_sqe` (include/uapi/linux/io_uring.h).
const OFF_LEN: usize = 24;
const OFF_OP_FLAGS: usize = 28;
const OFF_BUF_GROUP: usize = 40;

fn patch(entry: Entry, f: impl FnOnce(&mut [u8; 64])) -> Entry {
    const { assert!(std::mem::size_of::<Entry>() == 64) };
    // SAFETY: `Entry` is `#[repr(C)]` around the 64-byte, plain-data `struct io_uring_sqe`; every
    // bit pattern is a valid value of both types, and the size is checked above.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    f(&mut raw);
    // SAFETY: as above, the other way round.
    unsafe { std::mem::transmute::<[u8; 64], Entry>(raw) }
}

/// Set `sqe->len`.
pub fn with_len(entry: Entry, len: u32) -> Entry {
    patch(entry, |r| {
        r[OFF_LEN..OFF_LEN + 4].copy_from_slice(&len.to_ne_bytes())
    })
}

/// Add `flags` to `sqe->uring_cmd_flags`.
pub fn with_uring_cmd_flags(entry: Entry, flags: u32) -> Entry {
    patch(entry, |r| {
        let mut v = u32::from_ne_bytes(r[OFF_OP_FLAGS..OFF_OP_FLAGS + 4].try_into().unwrap());
        v |= flags;
        r[OFF_OP_FLAGS..OFF_OP_FLAGS + 4].copy_from_slice(&v.to_ne_bytes());
    })
}

/// Set `sqe->buf_group` (shares its bytes with `buf_index`).
pub fn with_buf_group(entry: Entry, bgid: u16) -> Entry {
    patch(entry, |r| {
        r[OFF_BUF_GROUP..OFF_BUF_GROUP + 2].copy_from_slice(&bgid.to_ne_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};

    fn bytes(e: Entry) -> [u8; 64] {
        let mut out = [0u8; 64];
        patch(e, |r| out = *r);
        out
    }

    /// The offsets agree with the crate's own builders, which set the same fields for other ops.
    #[test]
    fn offsets_match_the_crate_layout() {
        let null = std::ptr::null_mut();
        let read = opcode::Read::new(types::Fd(3), null, 4096).build();
        let ours = with_len(opcode::Read::new(types::Fd(3), null, 0).build(), 4096);
        assert_eq!(bytes(read), bytes(ours));

        let recv = opcode::RecvMulti::new(types::Fd(3), 7).build();
        let ours = with_buf_group(opcode::RecvMulti::new(types::Fd(3), 0).build(), 7);
        assert_eq!(bytes(recv), bytes(ours));

        let write = |flags| {
            opcode::Write::new(types::Fd(3), std::ptr::null(), 0)
                .rw_flags(flags)
                .build()
        };
        assert_eq!(
            bytes(write(0x10)),
            bytes(with_uring_cmd_flags(write(0), 0x10))
        );
    }
}
