//! Zeroes to write, without allocating: one zeroed buffer per thread, lent out as read-only views
//! of every power-of-two length up to [`MAX`]. Zeroing a range by writing (a target or a file
//! system without a native way) then costs no memory per request, however many run at once.

use std::rc::Rc;

use crate::IoBuf;

/// The longest view; a range is written in pieces of at most this many bytes.
pub const MAX: usize = 1 << 20;

/// Views of one zeroed buffer: `views[k]` is `1 << k` bytes long and ends where the buffer ends,
/// so it starts at a multiple of its own length (aligned for O_DIRECT whenever it is a multiple
/// of the block size). Only `&IoBuf` is ever lent, so nothing can write into the memory: reads
/// into a buffer and `as_mut_slice` both need `&mut`.
pub struct Zeroes {
    views: Vec<IoBuf>,
}

thread_local! {
    static ZEROES: Rc<Zeroes> = Rc::new(Zeroes::new());
}

/// This thread's zero buffer (made on first use; 1 MiB, never written).
pub fn zeroes() -> Rc<Zeroes> {
    ZEROES.with(Rc::clone)
}

impl Zeroes {
    fn new() -> Zeroes {
        let all = IoBuf::with_capacity(MAX);
        let views = (0..=MAX.trailing_zeros())
            .map(|k| all.tail(MAX - (1 << k)))
            .collect();
        Zeroes { views }
    }

    /// Pieces covering `len` bytes, in order: (offset from the start, zeroes of the piece's
    /// length). Each piece is the largest power of two that fits, at most [`MAX`]: pieces only
    /// shrink, so every offset is a multiple of the piece's length, and a `len` that is a multiple
    /// of a power-of-two block size gives pieces that are whole blocks at block-aligned offsets.
    pub fn pieces(&self, len: u64) -> impl Iterator<Item = (u64, &IoBuf)> + '_ {
        let mut at = 0u64;
        std::iter::from_fn(move || {
            let left = len - at;
            if left == 0 {
                return None;
            }
            let k = left.min(MAX as u64).ilog2() as usize;
            let piece = (at, &self.views[k]);
            at += 1 << k;
            Some(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_with_aligned_zero_views() {
        let z = zeroes();
        for len in [1u64, 512, 4096, 3 << 19, (5 << 20) + 4096 + 512, 777] {
            let mut next = 0;
            for (at, b) in z.pieces(len) {
                assert_eq!(at, next, "pieces are contiguous");
                assert!(b.len().is_power_of_two() && b.len() <= MAX);
                assert_eq!(at % b.len() as u64, 0, "offset is a multiple of the piece");
                assert_eq!(b.addr() as usize % b.len().min(crate::buf::ALIGN), 0);
                assert!(b.as_slice().iter().all(|&x| x == 0));
                next += b.len() as u64;
            }
            assert_eq!(next, len);
        }
        assert_eq!(z.pieces(0).count(), 0);
        assert_eq!(z.pieces(3 << 20).count(), 3);
        // One buffer per thread, shared by every caller.
        assert!(Rc::ptr_eq(&z, &zeroes()));
    }
}
