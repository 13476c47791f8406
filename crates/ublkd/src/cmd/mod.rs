//! One file per subcommand.

pub mod add;
pub mod create;
pub mod del;
pub mod docs;
pub mod export;
pub mod features;
pub mod list;
pub mod metrics;
pub mod recover;
pub mod resize;
pub mod stats;
pub mod top;
pub mod udev_id;
pub mod upgrade;
pub mod vhost;
