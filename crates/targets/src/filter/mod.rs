//! Filters: targets that wrap another target (in the spirit of nbdkit's filters).

pub mod delay;
