//! What a request may cost in memory. Both budgets (the connection's and the server's) are
//! charged this much before anything for the request exists, and get it back once its reply has
//! been sent, so a charge must cover everything serving the request allocates:
//!
//! - every request: its task (the boxed future of the request, which holds the target's op
//!   futures), the reply's header and segment list, an error reply's message: [`REQUEST_COST`]
//!   (a test in `conn.rs` checks that the task takes at most a quarter of it).
//! - READ: the data buffer, and for structured replies one chunk header and two segments per
//!   64 KiB granule, since data and holes may alternate: [`PIECE_COST`] per granule.
//! - WRITE: the payload buffer.
//! - BLOCK_STATUS: the target's extents (at most [`targets::MAX_EXTENTS`]), the descriptors
//!   and their encoding: [`BLOCK_STATUS_COST`].
//! - TRIM, WRITE_ZEROES, FLUSH, CACHE: nothing more. Zeroing by writing uses the thread's shared
//!   zero buffer (`rt::zeroes`), not a buffer per request, whatever length the request names.

use std::mem::size_of;

use super::request::Cmd;
use crate::proto::Descriptor;
use targets::{Extent, MAX_EXTENTS};

/// Charged for every request besides its data.
pub const REQUEST_COST: u64 = 4096;
/// Granule for finding all-zero runs in read data (sent as holes when fragmenting is allowed).
pub const HOLE_GRANULE: usize = 64 << 10;
/// One structured read chunk: its header (a small vector) and two segments.
pub const PIECE_COST: u64 = 256;
/// Most descriptors in one block status reply: one per target extent at most.
pub const MAX_DESCRIPTORS: usize = MAX_EXTENTS;
/// Extents, descriptors, the encoded payload and the reply holding it, each with room for a
/// vector's growth (up to twice what it holds).
pub const BLOCK_STATUS_COST: u64 = {
    let n = MAX_EXTENTS as u64;
    let extents = 2 * n * size_of::<Extent>() as u64;
    let descriptors = 2 * n * size_of::<Descriptor>() as u64;
    let wire = 2 * 2 * (32 + 8 * n);
    extents + descriptors + wire
};
// About 80 KiB: small beside the budgets, so block status requests still run many at once.
const _: () = assert!(BLOCK_STATUS_COST < 128 << 10);

/// Bytes to charge before serving `cmd`.
pub fn charge(cmd: &Cmd) -> u64 {
    REQUEST_COST
        + match *cmd {
            Cmd::Read { len, .. } => {
                len as u64 + (len as u64).div_ceil(HOLE_GRANULE as u64) * PIECE_COST
            }
            Cmd::Write { len, .. } => len as u64,
            Cmd::BlockStatus { .. } => BLOCK_STATUS_COST,
            Cmd::Trim { .. } | Cmd::WriteZeroes { .. } | Cmd::Flush | Cmd::Cache => 0,
        }
}

/// The most one request can be charged, for a largest payload of `max_payload` bytes: a budget
/// must hold at least this much, or that request could never run.
pub fn max_charge(max_payload: u32) -> u64 {
    charge(&Cmd::Read {
        off: 0,
        len: max_payload,
        df: false,
    })
    .max(REQUEST_COST + BLOCK_STATUS_COST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroing_costs_no_more_than_a_flush_and_reads_cover_their_pieces() {
        let wz = Cmd::WriteZeroes {
            off: 0,
            len: u32::MAX,
            fua: false,
            unmap: false,
            fast: false,
        };
        assert_eq!(charge(&wz), REQUEST_COST);
        assert_eq!(charge(&Cmd::Flush), REQUEST_COST);
        let r = |len| Cmd::Read {
            off: 0,
            len,
            df: false,
        };
        assert_eq!(charge(&r(4096)), REQUEST_COST + 4096 + PIECE_COST);
        assert_eq!(
            charge(&r(1 << 20)),
            REQUEST_COST + (1 << 20) + 16 * PIECE_COST
        );
        assert_eq!(max_charge(1 << 20), charge(&r(1 << 20)));
        assert_eq!(max_charge(512), REQUEST_COST + BLOCK_STATUS_COST);
    }
}
