//! NBD protocol: server (exports any target) and client (the `nbd` target). Not written yet.
