//! `qcow2`: a QEMU disk image, through imago (a qcow2 implementation by a QEMU block-layer
//! maintainer) over our io_uring runtime ([`storage::UringFile`]). Backing chains as the header
//! names them (relative names relative to the image, as QEMU resolves them; backings read-only),
//! or as `--backing`/`--no-backing` say; compressed clusters read.
//!
//! Shared state, by design: one imago image (`FormatAccess`) serves every queue, so its L2 and
//! refcount caches are shared and allocation is serialized inside imago (two queues writing into
//! the same unallocated cluster cannot both allocate it). Reads of allocated clusters and
//! overwrites take no lock of ours beyond a shared read guard; discards and write-zeroes take it
//! exclusively, because freeing or zeroing clusters breaks the mappings concurrent requests hold
//! (imago's contract for `discard_to_zero_unsafe`) and changes what "writable in place" means.
//!
//! Durability: imago caches metadata (L2 tables, refcount blocks). A write that changed metadata
//! (it allocated, or copied a cluster from the backing) is acknowledged only once that metadata
//! is out of imago's cache and in the image file ([`commit::MetaCommit`], batched across
//! queues), so a daemon killed with -9 loses nothing it acknowledged, as with every target.
//! FLUSH writes the metadata out, then fdatasyncs. A power cut is another matter (see
//! docs/design.md): what was written since the last FLUSH may be lost, and imago writes a
//! write-out's refcount blocks and L2 tables without a barrier between them, so a cut during
//! one can leave the image needing `qemu-img check -r all`.

mod commit;
pub mod create;
pub mod storage;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::format::Format;
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatDriverBuilder, Mapping, PermissiveImplicitOpenGate, StorageOpenOptions,
};
use serde::{Deserialize, Serialize};

use crate::kind::{Info, Opt, TargetKind, Value};
use crate::{Caps, Extent, Geometry, IoBuf, MAX_EXTENTS, OpenError, Target, TargetQueue};
use commit::MetaCommit;
use storage::UringFile;

/// `-t qcow2 --path IMAGE [--backing PATH | --no-backing] [--buffered]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Qcow2Config {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<PathBuf>,
    #[serde(default)]
    pub no_backing: bool,
    #[serde(default)]
    pub buffered: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// The image every queue serves.
struct Image {
    access: FormatAccess<UringFile>,
    /// Shared by every request; held exclusively by discards and write-zeroes (see the module
    /// docs).
    discard_lock: tokio::sync::RwLock<()>,
    commit: MetaCommit,
}

pub struct Qcow2Target {
    img: Arc<Image>,
    geo: Geometry,
    notes: Vec<String>,
}

/// "QFI\xfb": the first bytes of every qcow2 image.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Refuse what imago would serve wrongly: encrypted images (it does not decrypt; the header's
/// `crypt_method`, a big-endian u32 at offset 32, is not 0). Returns the backing file name the
/// header holds (`backing_file_offset`, u64 at 8; `backing_file_size`, u32 at 16), if any.
fn check_header(path: &Path) -> Result<Option<String>, OpenError> {
    use std::os::unix::fs::FileExt;
    let err = |e| open_error(path, e);
    let f = std::fs::File::open(path).map_err(err)?;
    let mut h = [0u8; 36];
    f.read_exact_at(&mut h, 0).map_err(err)?;
    if u32::from_be_bytes([h[32], h[33], h[34], h[35]]) != 0 {
        return Err(OpenError::Invalid(format!(
            "{} is encrypted, which ublkd does not serve (decrypt it with qemu-img convert)",
            path.display()
        )));
    }
    let off = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
    if off == 0 || len == 0 || len > 1023 {
        return Ok(None); // (qemu limits the name to 1023 bytes; imago judges a bad header)
    }
    let mut name = vec![0u8; len];
    f.read_exact_at(&mut name, off).map_err(err)?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// qcow2 or raw, by the magic number (for `--backing`, where no header names the format).
fn probe_format(path: &Path) -> io::Result<Format> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    Ok(if n == 4 && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// One line for the user, naming the image.
fn open_error(path: &Path, e: io::Error) -> OpenError {
    let msg = e.to_string().replace('\n', " ");
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            OpenError::Io(format!("cannot open {}: {msg}", path.display()))
        }
        _ => OpenError::Invalid(format!("{}: {msg}", path.display())),
    }
}

impl Qcow2Target {
    /// Open and check the image on a short-lived thread with its own runtime (imago's I/O runs
    /// on the calling thread's ring, and the caller may have none).
    fn open_image(c: &Qcow2Config) -> Result<Qcow2Target, OpenError> {
        let c2 = c.clone();
        std::thread::spawn(move || {
            let rt = rt::Runtime::new().map_err(|e| OpenError::Io(format!("io_uring: {e}")))?;
            rt.block_on(Qcow2Target::open_async(&c2))
        })
        .join()
        .map_err(|_| OpenError::Io("the qcow2 open thread panicked".into()))?
    }

    async fn open_async(c: &Qcow2Config) -> Result<Qcow2Target, OpenError> {
        let path = &c.path;
        let err = |e| open_error(path, e);
        std::fs::metadata(path).map_err(|e| open_error(path, e))?;
        if probe_format(path).map_err(err)? != Format::Qcow2 {
            return Err(OpenError::Invalid(format!(
                "{} is not a qcow2 image (serve a raw image with -t file)",
                path.display()
            )));
        }
        let header_backing = check_header(path)?;
        // The backing the header names: a regular file (an image's header must not make us
        // serve a host block device), and if qcow2, not encrypted (its own backings are not
        // looked at: QEMU does not make chains with encrypted images below the top).
        if let (false, None, Some(name)) = (c.no_backing, &c.backing, &header_backing) {
            let back = path.parent().unwrap_or(Path::new("/")).join(name);
            if std::fs::metadata(&back).is_ok_and(|m| !m.is_file()) {
                return Err(OpenError::Invalid(format!(
                    "{}: its backing file {} is not a regular file (name one with --backing)",
                    path.display(),
                    back.display()
                )));
            }
            if probe_format(&back).ok() == Some(Format::Qcow2) {
                check_header(&back)?;
            }
        }
        let mut b = Qcow2::<UringFile>::builder_path(path)
            .storage_open_options(StorageOpenOptions::new().direct(!c.buffered))
            .write(!c.read_only);
        if c.no_backing {
            b = b.backing(None);
        } else if let Some(back) = &c.backing {
            let fmt = probe_format(back).map_err(|e| open_error(back, e))?;
            if fmt == Format::Qcow2 {
                check_header(back)?;
            }
            b = b.backing_path(back, fmt);
        }
        // The image, the backing chain its header names (unless overridden above) and the
        // chain of a `--backing` image are opened through our storage, read-only below the top.
        let q = b
            .open(PermissiveImplicitOpenGate::default())
            .await
            .map_err(err)?;
        if q.requires_external_data_file() {
            return Err(OpenError::Invalid(format!(
                "{} keeps its data in an external data file, which ublkd does not serve",
                path.display()
            )));
        }
        let backing = match (c.no_backing, &c.backing, q.implicit_backing_file()) {
            (true, _, _) => "no backing file (--no-backing)".to_string(),
            (_, Some(b), _) => format!("backing file {} (--backing)", b.display()),
            (_, None, Some(b)) => format!("backing file {b} (from the header)"),
            (_, None, None) => "no backing file".to_string(),
        };
        let mut access = FormatAccess::new(q);
        // One request spanning several clusters reads or writes them in parallel.
        access.set_async_read_parallelization(8);
        access.set_async_write_parallelization(8);
        let size = access.size();
        let block = access.req_align().clamp(512, 4096) as u32;
        if size == 0 || size % block as u64 != 0 {
            return Err(OpenError::Invalid(format!(
                "{}: virtual size {size} is not a multiple of the {block}-byte block size",
                path.display()
            )));
        }
        let writable = !c.read_only;
        let geo = Geometry {
            size,
            logical_block: block,
            physical_block: block.max(4096),
            caps: Caps {
                flush: writable,
                fua: false,
                discard: writable,
                write_zeroes: writable,
                read_only: !writable,
                rotational: false,
                // imago reads and writes through slices of the request's bytes.
                needs_cpu_access: true,
                ignores_data: false,
                inline_io: false,
                consistent_across_queues: true,
            },
        };
        let inline = std::fs::File::open(path)
            .map(|f| crate::file::inline_by_default(std::os::fd::AsRawFd::as_raw_fd(&f)))
            .unwrap_or((false, ""));
        let notes = vec![format!(
            "{}: qcow2 image, virtual size {size}, {backing}{}; {}",
            path.display(),
            if writable { "" } else { ", read-only" },
            if inline.0 {
                "reads and writes inline on the queue threads (a file in memory)"
            } else {
                "reads and writes through io_uring"
            }
        )];
        Ok(Qcow2Target {
            img: Arc::new(Image {
                access,
                discard_lock: tokio::sync::RwLock::new(()),
                commit: MetaCommit::default(),
            }),
            geo,
            notes,
        })
    }
}

impl TargetKind for Qcow2Target {
    const INFO: Info = Info {
        name: "qcow2",
        about: "a qcow2 image (QEMU's format): backing chains, compressed clusters, allocation on first write",
        opts: &[
            Opt::new("path", Value::Path, "FILE", "the qcow2 image")
                .short('f')
                .required(),
            Opt::new(
                "backing",
                Value::Path,
                "PATH",
                "use this backing image (qcow2 or raw) instead of the one the header names",
            ),
            Opt::flag(
                "no-backing",
                "ignore the header's backing file: unallocated clusters read as zeroes",
            ),
            Opt::flag("buffered", "use the page cache instead of O_DIRECT"),
        ],
    };
    type Config = Qcow2Config;

    fn check(c: &Qcow2Config) -> Result<(), OpenError> {
        if c.no_backing && c.backing.is_some() {
            return Err(OpenError::Invalid(
                "--backing and --no-backing exclude each other".into(),
            ));
        }
        Ok(())
    }

    fn open(c: &Qcow2Config) -> Result<Qcow2Target, OpenError> {
        Self::check(c)?;
        Qcow2Target::open_image(c)
    }

    fn describe(c: &Qcow2Config) -> String {
        let mut d = format!("qcow2 {}", c.path.display());
        if let Some(b) = &c.backing {
            d.push_str(&format!(" (backing {})", b.display()));
        }
        if c.no_backing {
            d.push_str(" (no backing)");
        }
        if c.buffered {
            d.push_str(" (buffered)");
        }
        d
    }
}

impl Target for Qcow2Target {
    type Queue = Qcow2Queue;
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn open_queue(&self, _qid: u16) -> io::Result<Qcow2Queue> {
        Ok(Qcow2Queue {
            img: self.img.clone(),
        })
    }
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

impl Drop for Qcow2Target {
    /// Write cached metadata out when the last user goes (a device being deleted, an export
    /// stopping): imago cannot flush on drop in async mode.
    fn drop(&mut self) {
        if Arc::strong_count(&self.img) > 1 || !self.geo.caps.flush {
            return;
        }
        let img = self.img.clone();
        let r = std::thread::spawn(move || {
            rt::Runtime::new()?.block_on(async {
                img.access.flush().await?;
                img.access.sync().await
            })
        })
        .join();
        if !matches!(r, Ok(Ok(()))) {
            tracing::error!("qcow2: writing cached metadata out at close failed: {r:?}");
        }
    }
}

pub struct Qcow2Queue {
    img: Arc<Image>,
}

impl Qcow2Queue {
    /// Whether writing `[off, off+len)` needs no metadata change: every cluster of it is
    /// allocated in this image and writable in place.
    async fn writes_in_place(&self, mut off: u64, len: u64) -> io::Result<bool> {
        let end = off + len;
        while off < end {
            let (m, n) = self.img.access.get_mapping(off, end - off).await?;
            if !matches!(m, Mapping::Raw { writable: true, .. }) || n == 0 {
                return Ok(false);
            }
            off += n;
        }
        Ok(true)
    }

    /// Run `op`, which may change metadata, holding `guard` and a ticket; then, without the
    /// guard, wait until its metadata is written out.
    async fn changing<G>(
        &self,
        guard: G,
        op: impl Future<Output = io::Result<()>>,
    ) -> io::Result<()> {
        let t = self.img.commit.take();
        let r = op.await;
        let t = t.hand_back();
        drop(guard);
        r?;
        self.img.commit.wait(t, &self.img.access).await
    }

    /// Zero `[off, off+len)`, deallocating what can be.
    async fn discard_to_zero(&self, off: u64, len: u64) -> io::Result<()> {
        let g = self.img.discard_lock.write().await;
        // SAFETY: the exclusive guard means no other request holds a data mapping; write-outs
        // and flushes, which run without the guard, hold none either.
        let op = unsafe { self.img.access.discard_to_zero_unsafe(off, len) };
        self.changing(g, op).await
    }
}

impl TargetQueue for Qcow2Queue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        let _g = self.img.discard_lock.read().await;
        self.img.access.read(buf.as_mut_slice(), off).await
    }

    async fn write(&self, off: u64, buf: &IoBuf, _fua: bool) -> io::Result<()> {
        // (No FUA: the device does not advertise it; the kernel sends a flush instead.)
        let g = self.img.discard_lock.read().await;
        if !self.writes_in_place(off, buf.len() as u64).await? {
            return self
                .changing(g, self.img.access.write(buf.as_slice(), off))
                .await;
        }
        // Allocated and writable in place, and stays so under the guard: zeroing and
        // discarding, which change that, hold the guard exclusively.
        self.img.access.write(buf.as_slice(), off).await?;
        drop(g);
        // Reachable only through metadata an earlier request may not have written out yet.
        match self.img.commit.pending() {
            Some(upto) => self.img.commit.wait(upto, &self.img.access).await,
            None => Ok(()),
        }
    }

    async fn flush(&self) -> io::Result<()> {
        // Metadata out of imago's caches, then everything to stable storage, in that order.
        self.img.access.flush().await?;
        self.img.access.sync().await
    }

    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.discard_to_zero(off, len).await
    }

    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return self.discard_to_zero(off, len).await;
        }
        // Exclusive too: zeroing turns allocated clusters into zero clusters, which a write
        // that found them writable in place must not race.
        let g = self.img.discard_lock.write().await;
        self.changing(g, self.img.access.write_zeroes(off, len))
            .await
    }

    /// Allocation through the whole chain: data in any layer is data; what no layer has (or
    /// the top says is zero) is a hole reading as zeroes.
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _g = self.img.discard_lock.read().await;
        let mut out: Vec<Extent> = Vec::new();
        let (mut pos, end) = (off, off + len);
        while pos < end && out.len() < MAX_EXTENTS {
            let (m, n) = self.img.access.get_mapping(pos, end - pos).await?;
            let (hole, n) = match m {
                Mapping::Zero { .. } => (true, n),
                Mapping::Eof { .. } => (true, end - pos),
                _ => (false, n),
            };
            if n == 0 {
                break;
            }
            match out.last_mut() {
                Some(e) if e.hole == hole => e.len += n,
                _ => out.push(Extent {
                    len: n,
                    hole,
                    zero: hole,
                }),
            }
            pos += n;
        }
        Ok(out)
    }
}
