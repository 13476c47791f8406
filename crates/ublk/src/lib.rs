//! The ublk kernel interface. Being written.
