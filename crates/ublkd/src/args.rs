//! Command-line arguments shared by commands: one target parser for `add` and `export`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use targets::file::InlineIo;
use targets::size::parse_size;

use crate::spec::{FilterSpec, TargetSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// No storage: every request succeeds without touching data (a baseline for benchmarks).
    Null,
    /// RAM, gone when the daemon exits.
    Mem,
    /// A file or block device (`--path`).
    File,
    /// An NBD client: the blocks live on an NBD server (`--uri`).
    Nbd,
}

/// `--inline-io` (file target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InlineIoArg {
    Auto,
    On,
    Off,
}

impl From<InlineIoArg> for InlineIo {
    fn from(a: InlineIoArg) -> InlineIo {
        match a {
            InlineIoArg::Auto => InlineIo::Auto,
            InlineIoArg::On => InlineIo::On,
            InlineIoArg::Off => InlineIo::Off,
        }
    }
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
    /// When the file target reads and writes with blocking calls on its queue threads instead
    /// of io_uring: auto (files on tmpfs or ramfs, which io_uring would pass to a worker
    /// thread per request), on (always; a slow backing store then stalls the queue), off.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub inline_io: Option<InlineIoArg>,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// Logical block size in bytes (null and mem: 512 or 4096; file: follows the backing store).
    #[arg(long, value_parser = parse_size)]
    pub logical_block: Option<u64>,
    /// NBD server to use (nbd target): `nbd://host[:port][/name]` or
    /// `nbd+unix:///name?socket=/path`.
    #[arg(long, value_name = "URI")]
    pub uri: Option<String>,
    /// Seconds a request may wait for a lost NBD server to come back before it fails with EIO
    /// (nbd target; default 30).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Put a filter in front of the target; repeat to stack (the first wraps the target).
    /// `delay:ms=N` or `delay:us=N`: a fixed latency per request, unlimited concurrency.
    #[arg(long = "filter", value_name = "SPEC")]
    pub filters: Vec<String>,
}

/// Default `--timeout` of the nbd target.
pub const DEFAULT_NBD_TIMEOUT_SECS: u64 = 30;

impl TargetArgs {
    /// Check combinations and build the spec. Errors are one line.
    pub fn to_spec(&self) -> Result<TargetSpec, String> {
        let base = self.base_spec()?;
        if self.filters.is_empty() {
            return Ok(base);
        }
        let filters = self
            .filters
            .iter()
            .map(|f| FilterSpec::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TargetSpec::Filtered {
            filters,
            inner: Box::new(base),
        })
    }

    fn base_spec(&self) -> Result<TargetSpec, String> {
        let only_file = |flag: &str| format!("{flag} applies only to -t file");
        let only_nbd = |flag: &str| format!("{flag} applies only to -t nbd");
        let lb = self.logical_block.map(|b| b as u32).unwrap_or(512);
        if self.kind != TargetKind::Nbd {
            if self.uri.is_some() {
                return Err(only_nbd("--uri"));
            }
            if self.timeout.is_some() {
                return Err(only_nbd("--timeout"));
            }
        }
        match self.kind {
            TargetKind::Null | TargetKind::Mem => {
                if self.path.is_some() {
                    return Err(only_file("--path"));
                }
                if self.buffered {
                    return Err(only_file("--buffered"));
                }
                if self.inline_io.is_some() {
                    return Err(only_file("--inline-io"));
                }
                let size = self.size.ok_or_else(|| {
                    format!(
                        "-t {} needs --size (e.g. --size 1G)",
                        if self.kind == TargetKind::Null {
                            "null"
                        } else {
                            "mem"
                        }
                    )
                })?;
                Ok(if self.kind == TargetKind::Null {
                    TargetSpec::Null {
                        size,
                        logical_block: lb,
                    }
                } else {
                    TargetSpec::Mem {
                        size,
                        logical_block: lb,
                    }
                })
            }
            TargetKind::File => {
                let path = self.path.clone().ok_or("-t file needs --path FILE")?;
                if self.logical_block.is_some() {
                    return Err(
                        "--logical-block does not apply to -t file (it follows the backing store)"
                            .into(),
                    );
                }
                let path =
                    std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(TargetSpec::File {
                    path,
                    size: self.size,
                    buffered: self.buffered,
                    read_only: self.read_only,
                    inline_io: self.inline_io.map(InlineIo::from).unwrap_or_default(),
                })
            }
            TargetKind::Nbd => {
                let uri = self.uri.clone().ok_or(
                    "-t nbd needs --uri nbd://HOST[:PORT][/NAME] or nbd+unix:///NAME?socket=PATH",
                )?;
                if self.path.is_some() {
                    return Err(only_file("--path"));
                }
                if self.buffered {
                    return Err(only_file("--buffered"));
                }
                if self.inline_io.is_some() {
                    return Err(only_file("--inline-io"));
                }
                let from_server =
                    |flag: &str| format!("{flag} does not apply to -t nbd (the server decides it)");
                if self.size.is_some() {
                    return Err(from_server("--size"));
                }
                if self.logical_block.is_some() {
                    return Err(from_server("--logical-block"));
                }
                let timeout_secs = self.timeout.unwrap_or(DEFAULT_NBD_TIMEOUT_SECS);
                if timeout_secs == 0 {
                    return Err("--timeout must be at least 1 second".into());
                }
                // Check the form now (one line, before anything starts); resolved again at open.
                nbd::client::NbdConfig::new(&uri)?;
                Ok(TargetSpec::Nbd { uri, timeout_secs })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: TargetKind) -> TargetArgs {
        TargetArgs {
            kind,
            size: None,
            path: None,
            buffered: false,
            inline_io: None,
            read_only: false,
            logical_block: None,
            uri: None,
            timeout: None,
            filters: Vec::new(),
        }
    }

    #[test]
    fn filters_wrap_the_target_and_bad_ones_are_one_line() {
        let mut a = args(TargetKind::Null);
        a.size = Some(1 << 20);
        a.filters = vec!["delay:us=100".into()];
        match a.to_spec().unwrap() {
            TargetSpec::Filtered { filters, inner } => {
                assert_eq!(filters, vec![FilterSpec::Delay { us: 100 }]);
                assert!(matches!(*inner, TargetSpec::Null { .. }));
            }
            s => panic!("{s:?}"),
        }
        a.filters = vec!["delay:ms=oops".into()];
        let e = a.to_spec().unwrap_err();
        assert!(e.contains("delay:ms=N") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn nbd_options_are_checked() {
        let a = args(TargetKind::Nbd);
        assert!(a.to_spec().unwrap_err().contains("needs --uri"));
        let mut a = args(TargetKind::Nbd);
        a.uri = Some("http://x".into());
        let e = a.to_spec().unwrap_err();
        assert!(e.contains("invalid NBD URI") && !e.contains('\n'), "{e}");
        a.uri = Some("nbd://127.0.0.1:1234/disk".into());
        assert_eq!(
            a.to_spec().unwrap(),
            TargetSpec::Nbd {
                uri: "nbd://127.0.0.1:1234/disk".into(),
                timeout_secs: 30
            }
        );
        a.timeout = Some(5);
        assert_eq!(
            a.to_spec().unwrap(),
            TargetSpec::Nbd {
                uri: "nbd://127.0.0.1:1234/disk".into(),
                timeout_secs: 5
            }
        );
        a.timeout = Some(0);
        assert!(a.to_spec().unwrap_err().contains("at least 1"));
        a.timeout = None;
        a.size = Some(1 << 20);
        assert!(a.to_spec().unwrap_err().contains("--size does not apply"));
        let mut m = args(TargetKind::Mem);
        m.size = Some(1 << 20);
        m.uri = Some("nbd://127.0.0.1".into());
        assert!(
            m.to_spec()
                .unwrap_err()
                .contains("--uri applies only to -t nbd")
        );
        m.uri = None;
        m.timeout = Some(3);
        assert!(
            m.to_spec()
                .unwrap_err()
                .contains("--timeout applies only to -t nbd")
        );
        m.timeout = None;
        m.inline_io = Some(InlineIoArg::On);
        assert!(
            m.to_spec()
                .unwrap_err()
                .contains("--inline-io applies only to -t file")
        );
        let mut f = args(TargetKind::File);
        f.path = Some("/x.img".into());
        f.inline_io = Some(InlineIoArg::Off);
        assert!(matches!(
            f.to_spec().unwrap(),
            TargetSpec::File {
                inline_io: InlineIo::Off,
                ..
            }
        ));
        f.inline_io = None;
        assert!(matches!(
            f.to_spec().unwrap(),
            TargetSpec::File {
                inline_io: InlineIo::Auto,
                ..
            }
        ));
    }

    #[test]
    fn combinations_are_checked() {
        assert!(
            args(TargetKind::Null)
                .to_spec()
                .unwrap_err()
                .contains("needs --size")
        );
        assert!(
            args(TargetKind::File)
                .to_spec()
                .unwrap_err()
                .contains("needs --path")
        );
        let mut a = args(TargetKind::Mem);
        a.size = Some(1 << 20);
        a.path = Some("/x".into());
        assert!(a.to_spec().unwrap_err().contains("only to -t file"));
        a.path = None;
        assert_eq!(
            a.to_spec().unwrap(),
            TargetSpec::Mem {
                size: 1 << 20,
                logical_block: 512
            }
        );
        let mut f = args(TargetKind::File);
        f.path = Some("rel.img".into());
        match f.to_spec().unwrap() {
            TargetSpec::File { path, .. } => assert!(path.is_absolute()),
            s => panic!("{s:?}"),
        }
    }
}
