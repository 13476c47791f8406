//! `ublk`: the Linux ublk driver's userspace interface.
//!
//! - [`uapi`]: `#[repr(C)]` mirrors of `linux/ublk_cmd.h` and the ioctl-encoded command numbers;
//! - [`ctrl`]: `/dev/ublk-control` commands (add, params, start, stop, delete, info, features);
//! - [`queue`]: one queue's thread: descriptor mmap, one task per tag, fetch/commit;
//! - `batch`: the same with UBLK_F_BATCH_IO: batch prep, multishot fetch, batch commit;
//! - [`device`]: a device's lifecycle, undone on failure;
//! - [`features`]: flag names.

mod batch;
pub mod ctrl;
pub mod device;
pub mod features;
pub mod queue;
pub mod uapi;

pub use ctrl::{Control, ControlError};
pub use device::{Device, DeviceError, DeviceOptions};
pub use queue::{BufMode, QueueStats, QueueTuning};
