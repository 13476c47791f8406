//! Command-line arguments shared by commands: one target parser for `add` and `export`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use target::size::parse_size;

use crate::spec::TargetSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Null,
    Mem,
    File,
}

/// `-t TYPE` and the options of each target.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Target type.
    #[arg(short = 't', long = "type", value_enum)]
    pub kind: TargetKind,
    /// Device size (K/M/G/T suffixes); required for null and mem, optional for file.
    #[arg(short = 's', long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Backing file or block device (file target).
    #[arg(short = 'f', long)]
    pub path: Option<PathBuf>,
    /// Use the page cache instead of O_DIRECT (file target).
    #[arg(long)]
    pub buffered: bool,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// Logical block size in bytes (null and mem: 512 or 4096; file: follows the backing store).
    #[arg(long, value_parser = parse_size)]
    pub logical_block: Option<u64>,
}

impl TargetArgs {
    /// Check combinations and build the spec. Errors are one line.
    pub fn to_spec(&self) -> Result<TargetSpec, String> {
        let only_file = |flag: &str| format!("{flag} applies only to -t file");
        let lb = self.logical_block.map(|b| b as u32).unwrap_or(512);
        match self.kind {
            TargetKind::Null | TargetKind::Mem => {
                if self.path.is_some() {
                    return Err(only_file("--path"));
                }
                if self.buffered {
                    return Err(only_file("--buffered"));
                }
                let size = self.size.ok_or_else(|| {
                    format!("-t {} needs --size (e.g. --size 1G)", if self.kind == TargetKind::Null { "null" } else { "mem" })
                })?;
                Ok(if self.kind == TargetKind::Null {
                    TargetSpec::Null { size, logical_block: lb }
                } else {
                    TargetSpec::Mem { size, logical_block: lb }
                })
            }
            TargetKind::File => {
                let path = self.path.clone().ok_or("-t file needs --path FILE")?;
                if self.logical_block.is_some() {
                    return Err("--logical-block does not apply to -t file (it follows the backing store)".into());
                }
                let path = std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(TargetSpec::File { path, size: self.size, buffered: self.buffered, read_only: self.read_only })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: TargetKind) -> TargetArgs {
        TargetArgs { kind, size: None, path: None, buffered: false, read_only: false, logical_block: None }
    }

    #[test]
    fn combinations_are_checked() {
        assert!(args(TargetKind::Null).to_spec().unwrap_err().contains("needs --size"));
        assert!(args(TargetKind::File).to_spec().unwrap_err().contains("needs --path"));
        let mut a = args(TargetKind::Mem);
        a.size = Some(1 << 20);
        a.path = Some("/x".into());
        assert!(a.to_spec().unwrap_err().contains("only to -t file"));
        a.path = None;
        assert_eq!(a.to_spec().unwrap(), TargetSpec::Mem { size: 1 << 20, logical_block: 512 });
        let mut f = args(TargetKind::File);
        f.path = Some("rel.img".into());
        match f.to_spec().unwrap() {
            TargetSpec::File { path, .. } => assert!(path.is_absolute()),
            s => panic!("{s:?}"),
        }
    }
}
