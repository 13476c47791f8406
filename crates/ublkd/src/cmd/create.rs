//! `ublkd create`: make a new disk image to serve (qcow2, the format with allocation on first
//! write and backing chains), like `qemu-img create -f qcow2`.
//!
//! ```text
//! ublkd create -t qcow2 --path new.qcow2 --size 20G [--backing base.qcow2] [--cluster-size 64K]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use targets::qcow2::create::{CreateOptions, create};
use targets::size::{format_size, parse_size};

/// Image formats `create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageKind {
    Qcow2,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image format.
    #[arg(short = 't', long = "type", value_enum)]
    kind: ImageKind,
    /// The new image (must not exist).
    #[arg(short = 'f', long, value_name = "FILE")]
    path: PathBuf,
    /// Virtual size (K/M/G/T suffixes); default with --backing: the backing image's.
    #[arg(short = 's', long, value_parser = parse_size)]
    size: Option<u64>,
    /// Backing image (qcow2 or raw), written into the header as given: a relative name is
    /// relative to the new image's directory, as QEMU resolves it.
    #[arg(long, value_name = "PATH")]
    backing: Option<PathBuf>,
    /// Cluster size, a power of two from 512 to 2M.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    cluster_size: u64,
}

pub fn run(a: CreateArgs) -> ExitCode {
    let ImageKind::Qcow2 = a.kind;
    let o = CreateOptions {
        path: a.path.clone(),
        size: a.size,
        backing: a.backing.clone(),
        cluster_size: u32::try_from(a.cluster_size).unwrap_or(0),
    };
    if let Err(e) = create(&o) {
        return crate::fail(e);
    }
    let size = std::fs::metadata(&a.path).map(|m| m.len()).unwrap_or(0);
    tracing::debug!(
        "created {} ({} on disk)",
        a.path.display(),
        format_size(size)
    );
    crate::out::print(a.path.display())
}
