//! `rbd`: a Ceph RBD image as a target, through librbd's asynchronous calls.
//!
//! ```text
//! ublkd add    -t rbd --image POOL/IMAGE[@SNAP] [--id CLIENT] [--conf FILE] [--keyring FILE]
//!                     [--mon-host ADDR] [--connect-timeout SECS] [--handles shared|per-queue]
//! ublkd export -t rbd --image POOL/IMAGE ...
//! ```
//!
//! - One cluster connection per device; by default one image handle shared by every queue
//!   (librbd is thread-safe). `--handles per-queue` opens one handle per queue instead (for
//!   images without the exclusive-lock feature: handles of one process would otherwise take
//!   the lock from each other on every write). docs/bench-rbd.md has what each costs.
//! - Data: `rbd_aio_readv`/`rbd_aio_writev` straight from the request's buffer (copy mode:
//!   librbd needs an address); FUA is `rbd_aio_write2` with librados' FUA flag; FLUSH
//!   `rbd_aio_flush`; DISCARD `rbd_aio_discard`; WRITE_ZEROES `rbd_aio_write_zeroes`;
//!   BLOCK_STATUS (NBD exports) `rbd_diff_iterate2`, object-granular from the fast-diff map
//!   when the image has a valid one, on a helper thread (it may wait for the cluster).
//!   Completions come back on each queue's own io_uring (see [`image`]).
//! - librbd's cache is off: a write is acknowledged once the OSDs have it, so a daemon killed
//!   under load loses nothing the kernel was told is written (the kernel reissues the rest).
//!   Partial-object discards are not skipped, so discarded bytes read back as zeroes.
//! - A snapshot (`@SNAP`) is read-only: opening one without `--read-only` is refused.
//! - Connecting (and opening the image) happens in the daemon, never before it started
//!   (librados does not survive fork), within `--connect-timeout` (default 15 s).

pub mod ffi;
pub mod image;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use targets::kind::{Info, Opt, TargetKind, Value};
use targets::{Caps, Extent, Geometry, IoBuf, OpenError, Target, TargetQueue};

pub use image::{Cluster, ConnectOptions, Image, Stage};

/// Default `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 15;

/// `POOL[/NAMESPACE]/IMAGE[@SNAP]`, or `IMAGE[@SNAP]` in pool `rbd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    pub snap: Option<String>,
}

impl ImageSpec {
    pub fn parse(s: &str) -> Result<ImageSpec, String> {
        let bad =
            || format!("'{s}' is not an image: use POOL/IMAGE, POOL/NAMESPACE/IMAGE or add @SNAP");
        let (path, snap) = match s.split_once('@') {
            Some((p, snap)) if !snap.is_empty() && !snap.contains(['@', '/']) => {
                (p, Some(snap.to_string()))
            }
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let (pool, namespace, image) = match parts[..] {
            [image] => ("rbd", None, image),
            [pool, image] => (pool, None, image),
            [pool, ns, image] => (pool, Some(ns.to_string()), image),
            _ => return Err(bad()),
        };
        Ok(ImageSpec {
            pool: pool.to_string(),
            namespace,
            image: image.to_string(),
            snap,
        })
    }
}

impl std::fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.pool)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(f, "{}", self.image)?;
        if let Some(s) = &self.snap {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

/// Image handles per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Handles {
    /// One handle for all queues; completions reach their queue through its mailbox.
    #[default]
    Shared,
    /// One handle per queue, each with its own eventfd.
    PerQueue,
}

/// `-t rbd ...`, as a state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RbdConfig {
    pub image: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub conf: Option<String>,
    #[serde(default)]
    pub keyring: Option<String>,
    #[serde(default)]
    pub mon_host: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<u64>,
    #[serde(default)]
    pub handles: Handles,
    #[serde(default)]
    pub read_only: bool,
}

impl RbdConfig {
    fn spec(&self) -> Result<ImageSpec, OpenError> {
        ImageSpec::parse(&self.image).map_err(OpenError::Invalid)
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
    }
}

pub struct RbdTarget {
    spec: ImageSpec,
    cluster: Arc<Cluster>,
    image: Arc<Image>,
    handles: Handles,
    read_only: bool,
    geo: Geometry,
    /// The size served now: the image's at open, grown by `resize` after `rbd resize`.
    size: AtomicU64,
    /// Per-queue handles opened so far (the first queue takes `image`).
    first_taken: Mutex<bool>,
}

/// One line for an error number from connecting or opening, naming what failed.
fn open_error(cfg: &RbdConfig, spec: &ImageSpec, stage: &str, e: io::Error) -> OpenError {
    let who = format!("client.{}", cfg.id.as_deref().unwrap_or("admin"));
    let mons = cfg
        .mon_host
        .clone()
        .or_else(|| cfg.conf.clone().map(|c| format!("the monitors in {c}")))
        .unwrap_or_else(|| "the monitors in /etc/ceph/ceph.conf".into());
    let errno = e.raw_os_error();
    let msg = match (stage, errno) {
        ("connect", Some(libc::ETIMEDOUT)) | ("connect", Some(libc::EINTR)) => format!(
            "cannot reach {mons} within {} s (is the cluster up? --connect-timeout to wait longer)",
            cfg.timeout().as_secs()
        ),
        ("connect", Some(libc::EACCES)) | ("connect", Some(libc::EPERM)) => format!(
            "the cluster refused {who}: wrong key or no such client (check --id and --keyring)"
        ),
        ("connect", Some(libc::ENOENT)) => format!(
            "cannot connect as {who}: no key for it in {} (give --keyring FILE)",
            cfg.keyring
                .as_deref()
                .unwrap_or("the keyrings ceph.conf names")
        ),
        ("connect", None) => e.to_string(),
        ("pool", Some(libc::ENOENT)) => format!("pool '{}' does not exist", spec.pool),
        ("image", Some(libc::ENOENT)) => match &spec.snap {
            Some(s) => format!("image {} (or its snapshot '{s}') does not exist", spec),
            None => format!("image {spec} does not exist"),
        },
        (_, Some(libc::EPERM)) | (_, Some(libc::EACCES)) => {
            format!("{who} may not open {spec}: {}", image::describe_errno(&e))
        }
        (stage, _) => format!("{stage} {spec}: {}", image::describe_errno(&e)),
    };
    OpenError::Io(msg)
}

impl RbdTarget {
    pub fn open(cfg: &RbdConfig) -> Result<RbdTarget, OpenError> {
        Self::check(cfg)?;
        let spec = cfg.spec()?;
        let o = ConnectOptions {
            id: cfg.id.clone(),
            conf: cfg.conf.clone(),
            keyring: cfg.keyring.clone(),
            mon_host: cfg.mon_host.clone(),
            timeout: cfg.timeout(),
        };
        // Connecting may hang past librados' own timeout when a monitor accepts but never
        // answers: bound it here too. On timeout the helper thread is left behind (the caller
        // exits on this error) and nothing else was created.
        let (tx, rx) = std::sync::mpsc::channel();
        let (spec2, ro, cfg2) = (spec.clone(), cfg.read_only, cfg.clone());
        std::thread::Builder::new()
            .name("rbd-connect".into())
            .spawn(move || {
                let r = (|| {
                    let c = Cluster::connect(&o, &spec2.pool, spec2.namespace.as_deref()).map_err(
                        |(stage, e)| match stage {
                            image::Stage::Config => OpenError::Io(e.to_string()),
                            image::Stage::Connect => open_error(&cfg2, &spec2, "connect", e),
                            image::Stage::Pool => open_error(&cfg2, &spec2, "pool", e),
                        },
                    )?;
                    let c = Arc::new(c);
                    let img = Image::open(c.clone(), &spec2.image, spec2.snap.as_deref(), ro)
                        .map_err(|e| open_error(&cfg2, &spec2, "image", e))?;
                    Ok((c, img))
                })();
                let _ = tx.send(r);
            })
            .map_err(|e| OpenError::Io(format!("cannot start a thread: {e}")))?;
        let limit = cfg.timeout() + Duration::from_secs(5);
        let (cluster, image) = match rx.recv_timeout(limit) {
            Ok(r) => r?,
            Err(_) => {
                return Err(OpenError::Io(format!(
                    "no answer from the Ceph cluster within {} s while opening {spec}",
                    limit.as_secs()
                )));
            }
        };
        let size = image.size();
        if size == 0 || !size.is_multiple_of(512) {
            return Err(OpenError::Invalid(format!(
                "image {spec} is {size} bytes: not a positive multiple of 512"
            )));
        }
        if cfg.handles == Handles::PerQueue
            && !cfg.read_only
            && image.features() & ffi::RBD_FEATURE_EXCLUSIVE_LOCK != 0
        {
            return Err(OpenError::Invalid(format!(
                "--handles per-queue needs an image without the exclusive-lock feature \
                 (the queues' handles would take the lock from each other on every write): \
                 rbd feature disable {spec} fast-diff object-map exclusive-lock"
            )));
        }
        let ro = cfg.read_only;
        let caps = Caps {
            flush: !ro,
            fua: !ro,
            discard: !ro,
            write_zeroes: !ro,
            read_only: ro,
            rotational: false,
            needs_cpu_access: true,
            ignores_data: false,
            inline_io: false,
            consistent_across_queues: true,
        };
        Ok(RbdTarget {
            spec,
            cluster,
            image: Arc::new(image),
            handles: cfg.handles,
            read_only: ro,
            size: AtomicU64::new(size),
            geo: Geometry {
                size,
                logical_block: 512,
                physical_block: 4096,
                caps,
            },
            first_taken: Mutex::new(false),
        })
    }
}

impl TargetKind for RbdTarget {
    const INFO: Info = Info {
        name: "rbd",
        about: "a Ceph RBD image, through librbd's asynchronous calls (the cluster keeps the copies)",
        opts: &[
            Opt::new(
                "image",
                Value::Text,
                "POOL/IMAGE[@SNAP]",
                "the image (POOL/NAMESPACE/IMAGE too; a snapshot needs --read-only)",
            )
            .required(),
            Opt::new(
                "id",
                Value::Text,
                "CLIENT",
                "Ceph client id, without 'client.' (default admin)",
            ),
            Opt::new(
                "conf",
                Value::Path,
                "FILE",
                "ceph.conf to read (default: /etc/ceph/ceph.conf)",
            ),
            Opt::new(
                "keyring",
                Value::Path,
                "FILE",
                "keyring with the client's key",
            ),
            Opt::new(
                "mon-host",
                Value::Text,
                "ADDR",
                "monitor address(es), instead of or over the conf file's",
            ),
            Opt::new(
                "connect-timeout",
                Value::Count,
                "SECS",
                "give up connecting to the cluster after SECS seconds (default 15)",
            ),
            Opt::new(
                "handles",
                Value::Choice(&["shared", "per-queue"]),
                "HOW",
                "image handles: one shared by all queues (default), or one per queue (images \
                 without exclusive-lock only)",
            ),
        ],
    };
    type Config = RbdConfig;
    fn check(c: &RbdConfig) -> Result<(), OpenError> {
        let spec = c.spec()?;
        if let Some(s) = &spec.snap
            && !c.read_only
        {
            return Err(OpenError::Invalid(format!(
                "snapshot '{s}' of {} is read-only: add --read-only",
                ImageSpec {
                    snap: None,
                    ..spec.clone()
                }
            )));
        }
        if c.connect_timeout == Some(0) {
            return Err(OpenError::Invalid(
                "--connect-timeout must be at least 1 second".into(),
            ));
        }
        Ok(())
    }
    fn open(c: &RbdConfig) -> Result<RbdTarget, OpenError> {
        RbdTarget::open(c)
    }
    fn describe(c: &RbdConfig) -> String {
        let mut s = format!("rbd {}", c.image);
        if let Some(id) = &c.id {
            s.push_str(&format!(" (client.{id})"));
        }
        if c.handles == Handles::PerQueue {
            s.push_str(" (per-queue handles)");
        }
        if c.read_only {
            s.push_str(" (read-only)");
        }
        s
    }
}

impl Target for RbdTarget {
    type Queue = RbdQueue;
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            ..self.geo
        }
    }
    /// Follows the image: grows to `size` when the image (grown by `rbd resize`) holds it.
    fn resize(&self, size: u64) -> io::Result<()> {
        if !size.is_multiple_of(512) {
            return Err(io::Error::other(format!(
                "size {size} is not a multiple of 512"
            )));
        }
        let have = self.image.current_size()?;
        if have < size {
            return Err(io::Error::other(format!(
                "image {} is {have} bytes, fewer than {size}: grow it first (rbd resize)",
                self.spec
            )));
        }
        self.size.fetch_max(size, Ordering::AcqRel);
        Ok(())
    }
    fn backing_size(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.image.current_size()? / 512 * 512))
    }
    fn notes(&self) -> Vec<String> {
        vec![format!(
            "rbd {}: {} bytes, features {:#x}, {} image handle{}, block status {}",
            self.spec,
            self.geo.size,
            self.image.features(),
            match self.handles {
                Handles::Shared => "one shared",
                Handles::PerQueue => "one per-queue",
            },
            if self.handles == Handles::Shared {
                ""
            } else {
                "s"
            },
            if self.image.cheap_diff() {
                "from the fast-diff map"
            } else {
                "by listing objects"
            }
        )]
    }
    fn open_queue(&self, _qid: u16) -> io::Result<RbdQueue> {
        let image = match self.handles {
            Handles::Shared => self.image.clone(),
            Handles::PerQueue => {
                let mut first = self.first_taken.lock().unwrap_or_else(|e| e.into_inner());
                if !*first {
                    *first = true;
                    self.image.clone()
                } else {
                    Arc::new(Image::open(
                        self.cluster.clone(),
                        &self.spec.image,
                        self.spec.snap.as_deref(),
                        self.read_only,
                    )?)
                }
            }
        };
        Ok(RbdQueue {
            q: image::Queue::new(image),
        })
    }
}

pub struct RbdQueue {
    q: image::Queue,
}

impl RbdQueue {
    /// Operations librbd has not finished yet.
    pub fn in_flight(&self) -> usize {
        self.q.in_flight()
    }
}

impl TargetQueue for RbdQueue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.q.read(off, buf).await
    }
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        self.q.write(off, buf, fua).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.q.flush().await
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.q.discard(off, len).await
    }
    async fn write_zeroes(&self, off: u64, len: u64, _unmap: bool) -> io::Result<()> {
        // librbd zeroes by deallocating where it can, whatever `unmap` says; reads return
        // zeroes either way.
        self.q.write_zeroes(off, len).await
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        // rbd_diff_iterate2 blocks (it may read the object map from the cluster): run it on a
        // helper thread and wait for its answer on this queue's runtime.
        let image = self.q.image().clone();
        let result: Arc<Mutex<Option<DiffResult>>> = Arc::default();
        let done = rt::sync::Signal::new();
        {
            let (result, done) = (result.clone(), done.clone());
            std::thread::Builder::new()
                .name("rbd-diff".into())
                .spawn(move || {
                    let r = image.diff(off, len, targets::MAX_EXTENTS);
                    *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    done.raise();
                })?;
        }
        done.wait().await;
        let r = result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EIO)))?;
        Ok(extents(off, len, r))
    }
}

/// What `Image::diff` found: (offset, length, exists).
type DiffResult = io::Result<Vec<(u64, u64, bool)>>;

/// Turn librbd's allocated extents (absolute offsets, maybe object-granular and past the range)
/// into a covering list of extents from `off`, at most `MAX_EXTENTS`.
fn extents(off: u64, len: u64, mut v: Vec<(u64, u64, bool)>) -> Vec<Extent> {
    let end = off + len;
    v.sort_unstable_by_key(|e| e.0);
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = off;
    let push = |out: &mut Vec<Extent>, len: u64, data: bool| {
        if len == 0 {
            return;
        }
        match out.last_mut() {
            Some(l) if l.hole != data => l.len += len,
            _ => out.push(Extent {
                len,
                hole: !data,
                zero: !data,
            }),
        }
    };
    for (o, l, exists) in v {
        if !exists {
            continue;
        }
        let (s, e) = (o.max(pos), (o + l).min(end));
        if s >= e {
            continue;
        }
        push(&mut out, s - pos, false);
        push(&mut out, e - s, true);
        pos = e;
        if out.len() >= targets::MAX_EXTENTS - 1 {
            return out;
        }
    }
    push(&mut out, end - pos, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs_parse() {
        let s = ImageSpec::parse("pool/img@snap").unwrap();
        assert_eq!(
            s,
            ImageSpec {
                pool: "pool".into(),
                namespace: None,
                image: "img".into(),
                snap: Some("snap".into())
            }
        );
        assert_eq!(s.to_string(), "pool/img@snap");
        assert_eq!(ImageSpec::parse("img").unwrap().pool, "rbd");
        let s = ImageSpec::parse("p/ns/img").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.to_string(), "p/ns/img");
        for bad in [
            "", "p/", "/i", "p//i", "a/b/c/d", "p/i@", "p/i@a@b", "p/i@s/x",
        ] {
            assert!(ImageSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshots_need_read_only() {
        let mut c = RbdConfig {
            image: "rbd/disk@s1".into(),
            id: None,
            conf: None,
            keyring: None,
            mon_host: None,
            connect_timeout: None,
            handles: Handles::Shared,
            read_only: false,
        };
        let e = RbdTarget::check(&c).unwrap_err().to_string();
        assert!(e.contains("read-only") && e.contains("rbd/disk"), "{e}");
        c.read_only = true;
        RbdTarget::check(&c).unwrap();
        c.connect_timeout = Some(0);
        assert!(RbdTarget::check(&c).is_err());
    }

    #[test]
    fn diff_extents_cover_the_range() {
        let m = 4 << 20;
        // Object-granular data at [4M, 8M) and [12M, 16M); ask for [2M, 14M).
        let e = extents(
            2 << 20,
            12 << 20,
            vec![(m, m, true), (3 * m, m, true), (0, 1, false)],
        );
        let got: Vec<(u64, bool)> = e.iter().map(|x| (x.len >> 20, x.hole)).collect();
        assert_eq!(got, vec![(2, true), (4, false), (4, true), (2, false)]);
        assert_eq!(e.iter().map(|x| x.len).sum::<u64>(), 12 << 20);
        let e = extents(0, 4096, vec![]);
        assert_eq!(e.len(), 1);
        assert!(e[0].hole && e[0].zero);
    }
}
