//! `ublk`: the Linux ublk driver's userspace interface.
//!
//! - [`uapi`]: `#[repr(C)]` mirrors of `linux/ublk_cmd.h` and the ioctl-encoded command numbers;
//! - [`ctrl`]: `/dev/ublk-control` commands (add, params, start, stop, delete, info, features);
//! - [`queue`]: one queue's thread: one task per tag, fetch/serve/commit;
//! - `descs`: the descriptor array a queue maps from the char device;
//! - `inflight`: when a queue is done (stopping, and nothing being served);
//! - `batch`: the same with UBLK_F_BATCH_IO: batch prep, multishot fetch, batch commit;
//! - [`bufmode`]: where request data lives; `policy`: which flags a new device asks for;
//! - [`device`]: a device's lifecycle, undone on failure; [`options`]: what it is asked to be;
//! - [`features`]: flag names; [`shmem`]: a shared-memory buffer for SHMEM_ZC.

mod batch;
pub mod bufmode;
pub mod ctrl;
mod descs;
pub mod device;
mod fault;
pub mod features;
mod inflight;
pub mod options;
mod policy;
pub mod queue;
pub mod shmem;
pub mod uapi;

pub use bufmode::BufMode;
pub use ctrl::{Control, ControlError};
pub use device::{Device, DeviceError, DeviceOptions};
pub use queue::{QueueStats, QueueTuning};
