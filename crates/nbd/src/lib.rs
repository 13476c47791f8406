//! NBD (the Network Block Device protocol): a server that exports any [`targets::Target`], and a
//! client that is a `Target` itself.
//!
//! - [`proto`]: the wire format as pure encode/decode functions (what the fuzz target drives).
//! - [`server`]: fixed newstyle negotiation and the transmission phase, one task per connection
//!   on per-thread `rt` runtimes.
//! - [`client`]: `NbdTarget`, an NBD client used as a block device backend.

pub mod client;
#[doc(hidden)]
pub mod fuzz;
pub mod proto;
pub mod server;
pub mod shared_budget;
pub mod sock;
