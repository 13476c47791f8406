//! `ublkd features`: what the running kernel's ublk driver supports.

use std::process::ExitCode;

use clap::Args;
use ublk::{Control, features};

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FeaturesArgs) -> ExitCode {
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    let f = match ctrl.get_features() {
        Ok(f) => f,
        Err(e) => return crate::fail(format!("GET_FEATURES: {e} (kernel older than 6.5?)")),
    };
    let names = features::names(f);
    if a.json {
        return crate::out::print(
            serde_json::json!({ "flags": format!("{f:#x}"), "features": names }),
        );
    }
    let mut text = format!("ublk features {f:#x}:");
    for n in names {
        text += &format!("\n  {n}");
    }
    crate::out::print(text)
}
