//! NBD client target (not written yet).
