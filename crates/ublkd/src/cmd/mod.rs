//! One file per subcommand.

pub mod add;
pub mod create;
pub mod del;
pub mod export;
pub mod features;
pub mod list;
pub mod metrics;
pub mod recover;
pub mod stats;
pub mod top;
pub mod upgrade;
pub mod vhost;
