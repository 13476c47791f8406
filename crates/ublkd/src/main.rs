//! `ublkd`: the CLI and the per-device daemon.
//!
//! `add` starts a daemon (this same binary, `ublkd serve`) that creates the device and serves it
//! until `del` or SIGTERM; `list`, `del`, `features` talk to the driver and the state files.
//! `export` serves a target over NBD in the foreground (no ublk driver needed); `vhost` serves
//! one to a virtual machine as a vhost-user-blk backend.

mod args;
mod cmd;
mod control;
mod daemon;
mod device_args;
mod holders;
mod identity;
mod naming;
mod out;
mod process;
mod registry;
mod report;
mod resize;
mod serve;
mod spec;
mod state;
mod supervise;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ublkd",
    version = env!("UBLKD_VERSION"),
    about = "Serve Linux block devices from userspace (ublk)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a device served by a new background daemon; prints its path once it is live.
    Add(cmd::add::AddArgs),
    /// Make a new disk image to serve (qcow2), like `qemu-img create -f qcow2`.
    Create(cmd::create::CreateArgs),
    /// Show devices: id, state, queues, depth, size, target, daemon pid.
    List(cmd::list::ListArgs),
    /// Stop and remove a device; one that is mounted or open is refused unless --force.
    ///
    /// Stop and remove a device and its daemon (also a device whose daemon died or is stuck).
    /// A device that is mounted, open, or held (device mapper, swap, loop) is refused with one
    /// line naming the user ("device 0 is mounted on /mnt/x", "device 0 is open by pid 123
    /// (fio)"), and left as it was; on Linux 7.0+ the driver checks again as it stops the
    /// device (TRY_STOP_DEV), so nothing can open it in between. --force deletes it anyway:
    /// the file systems on it are synced first while its daemon still serves. del always
    /// finishes: a daemon that does not cooperate is killed after a bounded wait.
    Del(cmd::del::DelArgs),
    /// Serve a target as an NBD export in the foreground (same -t options as add); stops on
    /// SIGTERM/SIGINT.
    Export(cmd::export::ExportArgs),
    /// Serve a target to a VM as a vhost-user-blk backend in the foreground (same -t options
    /// as add); stops on SIGTERM/SIGINT.
    Vhost(cmd::vhost::VhostArgs),
    /// Show each device's request counts, rates and latency percentiles (from its daemon).
    ///
    /// Per device and per queue: requests, bytes and errors of each op since the daemon
    /// started, with latency percentiles (p50/p99/p99.9, from the time a request arrives to
    /// the time its result goes back) and IOPS and MB/s over --interval seconds.
    Stats(cmd::stats::StatsArgs),
    /// A live view of every device: IOPS, MB/s, p99 latency, requests in flight (q quits).
    ///
    /// On a terminal it redraws every --interval seconds until q or Ctrl-C; through a pipe it
    /// prints one line per device per interval (stop it with --iterations N).
    Top(cmd::top::TopArgs),
    /// Serve every device's counters and latency histograms to Prometheus (GET /metrics).
    Metrics(cmd::metrics::MetricsArgs),
    /// Print the ublk features of the running kernel.
    Features(cmd::features::FeaturesArgs),
    /// Start a new daemon for a device whose daemon died (user recovery).
    Recover(cmd::recover::RecoverArgs),
    /// Hand a live device to a new daemon (this binary) without failing I/O (Linux 6.16+).
    Upgrade(cmd::upgrade::UpgradeArgs),
    /// Grow a live device (file, mem and null targets; Linux 6.16+); the file system on it can
    /// then grow online (resize2fs, xfs_growfs).
    Resize(cmd::resize::ResizeArgs),
    /// Print shell completions (bash, zsh or fish) for ublkd.
    Completions(cmd::docs::CompletionsArgs),
    /// Write man pages for ublkd and each command into a directory.
    Man(cmd::docs::ManArgs),
    /// Print a disk's name and serial as udev properties (used by contrib/udev/60-ublkd.rules).
    #[command(hide = true)]
    UdevId(cmd::udev_id::UdevIdArgs),
    /// Run the daemon for one device in the foreground (used by `add`).
    #[command(hide = true)]
    Serve(serve::ServeArgs),
    /// Run a recovering daemon for one device (used by `recover`).
    #[command(hide = true)]
    ServeRecover(serve::RecoverServeArgs),
    /// Hand an unprivileged device's node to its owner (run by udev: contrib/udev).
    #[command(hide = true)]
    UdevOwner(cmd::udev_owner::UdevOwnerArgs),
    /// Watch a device's daemon and recover the device when it dies (used by `add --restart`).
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
}

/// Print an error as one line on stderr and exit 1.
pub fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ublkd: error: {msg}");
    ExitCode::FAILURE
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("UBLKD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's first line is the error itself; the usage that follows is noise here.
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("ublkd: error: {first} (see ublkd --help)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match cli.cmd {
        Command::Add(a) => cmd::add::run(a),
        Command::Create(a) => cmd::create::run(a),
        Command::List(a) => cmd::list::run(a),
        Command::Del(a) => cmd::del::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Vhost(a) => cmd::vhost::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Top(a) => cmd::top::run(a),
        Command::Metrics(a) => cmd::metrics::run(a),
        Command::Features(a) => cmd::features::run(a),
        Command::Recover(a) => cmd::recover::run(a),
        Command::Upgrade(a) => cmd::upgrade::run(a),
        Command::Resize(a) => cmd::resize::run(a),
        Command::Completions(a) => cmd::docs::completions(a),
        Command::Man(a) => cmd::docs::man(a),
        Command::UdevId(a) => cmd::udev_id::run(a),
        Command::Serve(a) => serve::run(a),
        Command::ServeRecover(a) => serve::run_recover(a),
        Command::Supervise(a) => supervise::run(a),
        Command::UdevOwner(a) => cmd::udev_owner::run(a),
    }
}
