//! One file per subcommand.

pub mod add;
pub mod create;
pub mod del;
pub mod export;
pub mod features;
pub mod list;
pub mod recover;
pub mod upgrade;
pub mod vhost;
