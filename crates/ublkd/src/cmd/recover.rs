//! `ublkd recover`: hand a device whose daemon died to a new daemon (UBLK_F_USER_RECOVERY).
//! The driver kept the disk and queued its I/O; the new daemon reopens the target from the
//! state file, fetches every tag again, and the queued I/O flows (reissued with `reissue`).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The device to recover.
    #[arg(short = 'n', long = "number")]
    pub id: u32,
    /// Serve in this process instead of a background daemon.
    #[arg(long)]
    pub foreground: bool,
    /// Print the device's description as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RecoverArgs) -> ExitCode {
    if let Err(e) = crate::state::state_dir() {
        return crate::fail(e);
    }
    if a.foreground {
        return crate::serve::run_recover(crate::serve::RecoverServeArgs {
            id: a.id,
            daemon: false,
        });
    }
    let args = vec![
        "serve-recover".into(),
        "--daemon".into(),
        "-n".into(),
        a.id.to_string(),
    ];
    crate::cmd::add::spawn_daemon(args, a.json)
}
