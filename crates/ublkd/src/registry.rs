//! The one list of targets and filters. `-t` and `--filter` parsing, `--help`, state files and
//! the run-time dispatch all come from it: a new target or filter is its own file (which
//! implements `TargetKind` or `FilterKind`) plus one line at the bottom of this one.
//!
//! Dispatch is an enum per level with one `match` per request, so an unfiltered device's
//! requests allocate nothing. A filter stack is recursive (a filter's next layer is any target,
//! filtered or not), so a filtered request boxes its future once per filter.

use serde_json::{Map, Value};
use targets::filter::{Filter, FilterQueue, Filtered, FilteredQueue};
use targets::kind::{FilterKind, Info, TargetKind, config_from};
use targets::{Extent, Geometry, IoBuf, OpenError, Target, TargetQueue};

/// Generates the run-time choice of target and filter from the lists at the bottom.
macro_rules! registry {
    (
        targets { $($t:ident => $tt:ty,)* }
        filters { $($f:ident => $ft:ty,)* }
    ) => {
        /// Any target, or a filter in front of one.
        pub enum AnyTarget {
            $($t($tt),)*
            Filtered(Box<Filtered<AnyFilter, AnyTarget>>),
        }

        /// One queue of an [`AnyTarget`].
        pub enum AnyQueue {
            $($t(<$tt as Target>::Queue),)*
            Filtered(Box<FilteredQueue<AnyFilterQueue, AnyQueue>>),
        }

        /// Any filter.
        pub enum AnyFilter {
            $($f($ft),)*
        }

        /// One queue of an [`AnyFilter`].
        pub enum AnyFilterQueue {
            $($f(<$ft as Filter>::Queue),)*
        }

        /// Every target, in the order `--help` lists them.
        pub const TARGETS: &[Info] = &[$(<$tt as TargetKind>::INFO,)*];
        /// Every filter.
        pub const FILTERS: &[Info] = &[$(<$ft as FilterKind>::INFO,)*];

        impl AnyTarget {
            /// Open a target of kind `kind` from its config object.
            pub fn open_kind(kind: &str, cfg: Map<String, Value>) -> Result<AnyTarget, OpenError> {
                $(if kind == <$tt as TargetKind>::INFO.name {
                    let c = config_from::<<$tt as TargetKind>::Config>(kind, cfg)?;
                    return Ok(AnyTarget::$t(<$tt as TargetKind>::open(&c)?));
                })*
                Err(unknown("target", kind, TARGETS))
            }

            /// Check `cfg` without opening anything; the kind's short description of it.
            pub fn describe_kind(kind: &str, cfg: Map<String, Value>) -> Result<String, OpenError> {
                $(if kind == <$tt as TargetKind>::INFO.name {
                    let c = config_from::<<$tt as TargetKind>::Config>(kind, cfg)?;
                    <$tt as TargetKind>::check(&c)?;
                    return Ok(<$tt as TargetKind>::describe(&c));
                })*
                Err(unknown("target", kind, TARGETS))
            }
        }

        impl AnyFilter {
            /// Make a filter of kind `kind` from its config object.
            pub fn new_kind(kind: &str, cfg: Map<String, Value>) -> Result<AnyFilter, OpenError> {
                $(if kind == <$ft as FilterKind>::INFO.name {
                    let c = config_from::<<$ft as FilterKind>::Config>(kind, cfg)?;
                    return Ok(AnyFilter::$f(<$ft as FilterKind>::new(&c)?));
                })*
                Err(unknown("filter", kind, FILTERS))
            }

            /// The filter as typed on the command line (checking `cfg` on the way).
            pub fn describe_kind(kind: &str, cfg: Map<String, Value>) -> Result<String, OpenError> {
                $(if kind == <$ft as FilterKind>::INFO.name {
                    let c = config_from::<<$ft as FilterKind>::Config>(kind, cfg)?;
                    <$ft as FilterKind>::new(&c)?;
                    return Ok(<$ft as FilterKind>::describe(&c));
                })*
                Err(unknown("filter", kind, FILTERS))
            }
        }

        impl Target for AnyTarget {
            type Queue = AnyQueue;
            fn geometry(&self) -> Geometry {
                match self {
                    $(AnyTarget::$t(t) => t.geometry(),)*
                    AnyTarget::Filtered(t) => t.geometry(),
                }
            }
            fn open_queue(&self, qid: u16) -> std::io::Result<AnyQueue> {
                Ok(match self {
                    $(AnyTarget::$t(t) => AnyQueue::$t(t.open_queue(qid)?),)*
                    AnyTarget::Filtered(t) => AnyQueue::Filtered(Box::new(t.open_queue(qid)?)),
                })
            }
            fn max_queues(&self) -> usize {
                match self {
                    $(AnyTarget::$t(t) => t.max_queues(),)*
                    AnyTarget::Filtered(t) => t.max_queues(),
                }
            }
            fn notes(&self) -> Vec<String> {
                match self {
                    $(AnyTarget::$t(t) => t.notes(),)*
                    AnyTarget::Filtered(t) => t.notes(),
                }
            }
            fn resize(&self, size: u64) -> std::io::Result<()> {
                match self {
                    $(AnyTarget::$t(t) => t.resize(size),)*
                    AnyTarget::Filtered(t) => t.resize(size),
                }
            }
            fn backing_size(&self) -> std::io::Result<Option<u64>> {
                match self {
                    $(AnyTarget::$t(t) => t.backing_size(),)*
                    AnyTarget::Filtered(t) => t.backing_size(),
                }
            }
        }

        // A filtered queue's future is boxed (see the module docs).
        impl TargetQueue for AnyQueue {
            async fn read(&self, off: u64, buf: &mut IoBuf) -> std::io::Result<()> {
                match self {
                    $(AnyQueue::$t(q) => q.read(off, buf).await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.read(off, buf)).await,
                }
            }
            async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> std::io::Result<()> {
                match self {
                    $(AnyQueue::$t(q) => q.write(off, buf, fua).await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.write(off, buf, fua)).await,
                }
            }
            async fn flush(&self) -> std::io::Result<()> {
                match self {
                    $(AnyQueue::$t(q) => q.flush().await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.flush()).await,
                }
            }
            async fn discard(&self, off: u64, len: u64) -> std::io::Result<()> {
                match self {
                    $(AnyQueue::$t(q) => q.discard(off, len).await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.discard(off, len)).await,
                }
            }
            async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> std::io::Result<()> {
                match self {
                    $(AnyQueue::$t(q) => q.write_zeroes(off, len, unmap).await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.write_zeroes(off, len, unmap)).await,
                }
            }
            async fn block_status(&self, off: u64, len: u64) -> std::io::Result<Vec<Extent>> {
                match self {
                    $(AnyQueue::$t(q) => q.block_status(off, len).await,)*
                    AnyQueue::Filtered(q) => Box::pin(q.block_status(off, len)).await,
                }
            }
        }

        impl Filter for AnyFilter {
            type Queue = AnyFilterQueue;
            fn geometry(&self, next: Geometry) -> Geometry {
                match self {
                    $(AnyFilter::$f(f) => f.geometry(next),)*
                }
            }
            fn max_queues(&self, next: usize) -> usize {
                match self {
                    $(AnyFilter::$f(f) => f.max_queues(next),)*
                }
            }
            fn notes(&self, next: Vec<String>) -> Vec<String> {
                match self {
                    $(AnyFilter::$f(f) => f.notes(next),)*
                }
            }
            fn open_queue(&self, qid: u16) -> std::io::Result<AnyFilterQueue> {
                Ok(match self {
                    $(AnyFilter::$f(f) => AnyFilterQueue::$f(f.open_queue(qid)?),)*
                })
            }
        }

        impl FilterQueue for AnyFilterQueue {
            async fn read<N: TargetQueue>(&self, next: &N, off: u64, buf: &mut IoBuf) -> std::io::Result<()> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.read(next, off, buf).await,)*
                }
            }
            async fn write<N: TargetQueue>(&self, next: &N, off: u64, buf: &IoBuf, fua: bool) -> std::io::Result<()> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.write(next, off, buf, fua).await,)*
                }
            }
            async fn flush<N: TargetQueue>(&self, next: &N) -> std::io::Result<()> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.flush(next).await,)*
                }
            }
            async fn discard<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> std::io::Result<()> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.discard(next, off, len).await,)*
                }
            }
            async fn write_zeroes<N: TargetQueue>(&self, next: &N, off: u64, len: u64, unmap: bool) -> std::io::Result<()> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.write_zeroes(next, off, len, unmap).await,)*
                }
            }
            async fn block_status<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> std::io::Result<Vec<Extent>> {
                match self {
                    $(AnyFilterQueue::$f(q) => q.block_status(next, off, len).await,)*
                }
            }
        }
    };
}

/// An unknown kind, naming the known ones (one line).
pub(crate) fn unknown(what: &str, kind: &str, known: &[Info]) -> OpenError {
    let names: Vec<&str> = known.iter().map(|i| i.name).collect();
    OpenError::Invalid(format!(
        "unknown {what} '{kind}' (known: {})",
        names.join(", ")
    ))
}

/// The target kind named `name`.
pub fn target_info(name: &str) -> Option<&'static Info> {
    TARGETS.iter().find(|i| i.name == name)
}

/// The filter kind named `name`.
pub fn filter_info(name: &str) -> Option<&'static Info> {
    FILTERS.iter().find(|i| i.name == name)
}

impl AnyTarget {
    /// `filter` in front of `self`.
    pub fn filtered(self, filter: AnyFilter) -> AnyTarget {
        AnyTarget::Filtered(Box::new(Filtered { filter, next: self }))
    }
}

registry! {
    targets {
        Null => targets::null::NullTarget,
        Mem => targets::mem::MemTarget,
        File => targets::file::FileTarget,
        Nbd => nbd::client::NbdTarget,
        Qcow2 => targets::qcow2::Qcow2Target,
        Rbd => rbd::RbdTarget,
    }
    filters {
        Delay => targets::filter::delay::Delay,
        Error => targets::filter::error::ErrorFilter,
        Rate => targets::filter::rate::Rate,
        ReadOnly => targets::filter::readonly::ReadOnly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Options of the same name mean the same thing everywhere (the CLI has one `--size`).
    #[test]
    fn shared_option_names_agree() {
        let mut seen: HashMap<&str, (targets::kind::Value, Option<char>)> = HashMap::new();
        for i in TARGETS {
            for o in i.opts {
                let v = (o.value, o.short);
                assert_eq!(
                    *seen.entry(o.name).or_insert(v),
                    v,
                    "--{} differs in {}",
                    o.name,
                    i.name
                );
                assert!(o.name != "read-only" && o.name != "type" && o.name != "filter");
            }
        }
        let mut names: Vec<&str> = TARGETS.iter().chain(FILTERS).map(|i| i.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "two kinds share a name");
    }

    #[test]
    fn unknown_kinds_name_the_known_ones() {
        let e = AnyTarget::open_kind("qcow9", Map::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown target 'qcow9'") && e.contains("null, mem, file, nbd"),
            "{e}"
        );
        let e = AnyFilter::new_kind("slow", Map::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown filter 'slow'") && e.contains("delay"),
            "{e}"
        );
    }
}
