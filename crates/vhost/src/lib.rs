pub mod config;
pub mod inflight;
pub mod memory;
pub mod request;
