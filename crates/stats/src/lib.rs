//! `stats`: what a queue has done, cheap enough to keep always on.
//!
//! - [`hist`]: log-linear latency buckets (powers of two split into 8), percentiles;
//! - [`counters`]: one queue's counters, written by that queue's thread alone with plain
//!   relaxed stores (no lock, no read-modify-write), read by anyone as a snapshot;
//! - [`snapshot`]: what readers get (serde: the daemon's control socket sends it as JSON),
//!   and rates between two snapshots;
//! - [`prom`]: snapshots in the Prometheus text exposition format.

pub mod counters;
pub mod hist;
pub mod prom;
pub mod snapshot;

pub use counters::{Op, QueueCounters};
pub use snapshot::{DeviceSnapshot, OpSnapshot, QueueSnapshot};
