//! `rt`: a single-threaded executor over one io_uring per thread.
//!
//! Every I/O is an io_uring operation wrapped in a future ([`op::Op`]). Tasks push their SQEs while
//! they are polled; the loop then makes exactly one `io_uring_enter` that submits everything queued
//! and waits for at least one completion (batching). Nothing here knows about block devices.
//!
//! Layout: [`runtime`] (the loop, spawn, statistics), [`op`] (the op lifecycle and the buffer
//! lifetime invariant), [`buf`] (I/O buffers, and their lends to the kernel while ops use them), [`bufpool`] (a per-thread free list of small buffers' memory), [`fs`] / [`net`] / [`time`] (typed ops),
//! [`sync`] (channels and notifications, also across threads), [`local`] (a FIFO lock, a byte
//! budget and a notification for the tasks of one runtime), [`select`] (first of two futures),
//! [`pbuf`] (provided buffers for multishot ops), [`sqe`] (SQE fields the builders lack),
//! [`zeroes`] (a shared zero buffer for writing zeroes).

pub mod buf;
pub mod bufpool;
pub mod fs;
pub mod local;
pub mod net;
pub mod op;
pub mod pbuf;
pub mod poll;
pub mod runtime;
pub mod select;
pub mod sqe;
pub mod sync;
pub mod task;
pub mod time;
pub mod zeroes;

pub use buf::IoBuf;
pub use runtime::{Builder, Runtime, Stats, spawn};
pub use task::JoinHandle;
