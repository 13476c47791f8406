//! What a target is, as data: parsed from the command line, stored in a device's state file, and
//! opened again by a recovering daemon.

use std::path::PathBuf;
use std::time::Duration;

use nbd::client::{NbdConfig, NbdTarget};

pub use targets::OpenError;
use targets::file::{FileTarget, InlineIo};
use targets::filter::delay::Delay;
use targets::mem::MemTarget;
use targets::null::NullTarget;
use targets::size::format_size;

use crate::any::AnyTarget;

/// A target description. `serde` form: `{"type":"file","path":...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetSpec {
    Null {
        size: u64,
        #[serde(default = "default_block")]
        logical_block: u32,
    },
    Mem {
        size: u64,
        #[serde(default = "default_block")]
        logical_block: u32,
    },
    File {
        path: PathBuf,
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        buffered: bool,
        #[serde(default)]
        read_only: bool,
        #[serde(default)]
        inline_io: InlineIo,
    },
    /// An NBD client target.
    Nbd {
        uri: String,
        /// Reconnect timeout: a request that cannot complete within it fails with EIO.
        #[serde(default = "default_nbd_timeout")]
        timeout_secs: u64,
    },
    /// Another target seen through filters (`--filter`), applied in order: the first wraps the
    /// target, the last is what the frontend sees.
    Filtered {
        filters: Vec<FilterSpec>,
        inner: Box<TargetSpec>,
    },
}

/// A filter, as data. `serde` form: `{"type":"delay","us":5000}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FilterSpec {
    /// Fixed latency per request, unlimited concurrency.
    Delay { us: u64 },
}

impl FilterSpec {
    /// Parse `delay:ms=N` or `delay:us=N`. Errors are one line.
    pub fn parse(s: &str) -> Result<FilterSpec, String> {
        match s.split_once(':') {
            Some(("delay", params)) => {
                let d = targets::filter::delay::parse_params(params).map_err(|e| e.to_string())?;
                Ok(FilterSpec::Delay {
                    us: d.as_micros() as u64,
                })
            }
            _ if s == "delay" => {
                Err("--filter delay needs a latency: delay:ms=N or delay:us=N".into())
            }
            _ => Err(format!(
                "unknown filter '{s}' (known: delay:ms=N, delay:us=N)"
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FilterSpec::Delay { us } if us % 1000 == 0 => format!("delay:ms={}", us / 1000),
            FilterSpec::Delay { us } => format!("delay:us={us}"),
        }
    }

    fn wrap(&self, inner: AnyTarget) -> AnyTarget {
        match self {
            FilterSpec::Delay { us } => {
                AnyTarget::Delay(Box::new(Delay::new(inner, Duration::from_micros(*us))))
            }
        }
    }
}

fn default_nbd_timeout() -> u64 {
    crate::args::DEFAULT_NBD_TIMEOUT_SECS
}

fn default_block() -> u32 {
    512
}

fn check_size(size: u64, block: u32) -> Result<(), OpenError> {
    if !matches!(block, 512 | 1024 | 2048 | 4096) {
        return Err(OpenError::Invalid(format!(
            "logical block size {block} is not one of 512, 1024, 2048, 4096"
        )));
    }
    if size == 0 {
        return Err(OpenError::Invalid("size must be greater than zero".into()));
    }
    if !size.is_multiple_of(block as u64) {
        return Err(OpenError::Invalid(format!(
            "size {size} is not a multiple of the {block}-byte block size"
        )));
    }
    Ok(())
}

impl TargetSpec {
    /// A short human description for `list`.
    pub fn describe(&self) -> String {
        match self {
            TargetSpec::Null { size, .. } => format!("null {}", format_size(*size)),
            TargetSpec::Mem { size, .. } => format!("mem {}", format_size(*size)),
            TargetSpec::File {
                path,
                buffered,
                inline_io,
                ..
            } => {
                format!(
                    "file {}{}{}",
                    path.display(),
                    if *buffered { " (buffered)" } else { "" },
                    match inline_io {
                        InlineIo::Auto => String::new(),
                        m => format!(" (inline-io {})", m.name()),
                    }
                )
            }
            TargetSpec::Nbd { uri, .. } => format!("nbd {uri}"),
            TargetSpec::Filtered { filters, inner } => {
                let mut d = inner.describe();
                for f in filters {
                    d.push_str(" +");
                    d.push_str(&f.describe());
                }
                d
            }
        }
    }

    /// Check and open. Nothing is created on failure.
    pub fn open(&self) -> Result<AnyTarget, OpenError> {
        match self {
            TargetSpec::Null {
                size,
                logical_block,
            } => {
                check_size(*size, *logical_block)?;
                Ok(AnyTarget::Null(NullTarget::new(*size, *logical_block)))
            }
            TargetSpec::Mem {
                size,
                logical_block,
            } => {
                check_size(*size, *logical_block)?;
                MemTarget::new(*size, *logical_block)
                    .map(AnyTarget::Mem)
                    .map_err(|e| {
                        OpenError::Io(format!(
                            "cannot reserve {} of memory: {e}",
                            format_size(*size)
                        ))
                    })
            }
            TargetSpec::File {
                path,
                size,
                buffered,
                read_only,
                inline_io,
            } => {
                let mut t = FileTarget::open(path, *size, *buffered, *read_only)?;
                t.set_inline_io(*inline_io);
                Ok(AnyTarget::File(t))
            }
            TargetSpec::Nbd { uri, timeout_secs } => {
                let mut c = NbdConfig::new(uri).map_err(OpenError::Invalid)?;
                c.timeout = Duration::from_secs(*timeout_secs);
                NbdTarget::open(c)
                    .map(AnyTarget::Nbd)
                    .map_err(|e| OpenError::Io(format!("NBD server {uri}: {e}")))
            }
            TargetSpec::Filtered { filters, inner } => {
                Ok(filters.iter().fold(inner.open()?, |t, f| f.wrap(t)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use targets::Target;

    #[test]
    fn spec_round_trips_through_json() {
        let s = TargetSpec::File {
            path: "/x.img".into(),
            size: Some(4096),
            buffered: true,
            read_only: false,
            inline_io: InlineIo::Off,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"type\":\"file\""), "{j}");
        assert!(j.contains("\"inline_io\":\"off\""), "{j}");
        // Specs saved before --inline-io existed still load, as auto.
        let old: TargetSpec = serde_json::from_str(r#"{"type":"file","path":"/x.img"}"#).unwrap();
        assert!(
            matches!(
                old,
                TargetSpec::File {
                    inline_io: InlineIo::Auto,
                    ..
                }
            ),
            "{old:?}"
        );
        assert_eq!(serde_json::from_str::<TargetSpec>(&j).unwrap(), s);
        let n: TargetSpec = serde_json::from_str(r#"{"type":"null","size":1024}"#).unwrap();
        assert_eq!(
            n,
            TargetSpec::Null {
                size: 1024,
                logical_block: 512
            }
        );
    }

    #[test]
    fn nbd_spec_round_trips_and_reports_refusal_in_one_line() {
        let s = TargetSpec::Nbd {
            uri: "nbd://127.0.0.1:1/x".into(),
            timeout_secs: 7,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"type\":\"nbd\""), "{j}");
        assert_eq!(serde_json::from_str::<TargetSpec>(&j).unwrap(), s);
        let d: TargetSpec = serde_json::from_str(r#"{"type":"nbd","uri":"nbd://h"}"#).unwrap();
        assert_eq!(
            d,
            TargetSpec::Nbd {
                uri: "nbd://h".into(),
                timeout_secs: 30
            }
        );
        // Port 1 on loopback: nobody listens there.
        let e = s.open().err().unwrap().to_string();
        assert!(
            e.contains("nbd://127.0.0.1:1/x") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn filters_parse_round_trip_and_open() {
        assert_eq!(
            FilterSpec::parse("delay:ms=5").unwrap(),
            FilterSpec::Delay { us: 5000 }
        );
        assert_eq!(
            FilterSpec::parse("delay:us=250").unwrap(),
            FilterSpec::Delay { us: 250 }
        );
        for bad in [
            "delay",
            "delay:",
            "delay:ms=x",
            "delay:s=1",
            "slow:ms=1",
            "",
        ] {
            let e = FilterSpec::parse(bad).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e}");
        }
        let s = TargetSpec::Filtered {
            filters: vec![FilterSpec::Delay { us: 5000 }],
            inner: Box::new(TargetSpec::Null {
                size: 1 << 20,
                logical_block: 512,
            }),
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TargetSpec>(&j).unwrap(), s);
        assert_eq!(s.describe(), "null 1M +delay:ms=5");
        let t = s.open().unwrap();
        assert_eq!(t.geometry().size, 1 << 20);
        assert!(matches!(t, AnyTarget::Delay(_)));
    }

    #[test]
    fn sizes_are_checked() {
        let e = TargetSpec::Null {
            size: 1000,
            logical_block: 512,
        }
        .open()
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("not a multiple of the 512-byte block size"),
            "{e}"
        );
        let e = TargetSpec::Mem {
            size: 0,
            logical_block: 512,
        }
        .open()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("greater than zero"), "{e}");
        let e = TargetSpec::Mem {
            size: 4096,
            logical_block: 1000,
        }
        .open()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("not one of"), "{e}");
        let t = TargetSpec::Null {
            size: 1 << 40,
            logical_block: 4096,
        }
        .open()
        .unwrap();
        assert_eq!(t.geometry().size, 1 << 40);
    }
}
