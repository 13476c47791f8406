//! Making a new qcow2 image (`ublkd create -t qcow2`), with imago's creation builder over our
//! storage: the same image `qemu-img create -f qcow2` makes (qcow2 v3, 16-bit refcounts).

use std::io;
use std::path::{Path, PathBuf};

use imago::format::Format;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};

use super::storage::UringFile;
use super::{Qcow2Config, Qcow2Target, probe_format};
use crate::OpenError;
use crate::kind::TargetKind;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub path: PathBuf,
    /// Virtual size; with a backing image, `None` takes the backing's.
    pub size: Option<u64>,
    /// The backing image as the header should name it: relative names are relative to the new
    /// image's directory, as QEMU resolves them.
    pub backing: Option<PathBuf>,
    pub cluster_size: u32,
}

/// Create the image; nothing is left behind on failure (an existing file is never touched).
pub fn create(o: &CreateOptions) -> Result<(), OpenError> {
    let bad = |m: String| Err(OpenError::Invalid(m));
    if !o.cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&o.cluster_size) {
        return bad(format!(
            "cluster size {} is not a power of two from 512 to 2M",
            o.cluster_size
        ));
    }
    if o.path.exists() {
        return bad(format!("{} already exists", o.path.display()));
    }
    let dir = o.path.parent().unwrap_or(Path::new("."));
    let backing = match &o.backing {
        None => None,
        Some(name) => {
            let at = if name.is_absolute() {
                name.clone()
            } else {
                dir.join(name)
            };
            let fmt = probe_format(&at)
                .map_err(|e| OpenError::Io(format!("backing image {}: {e}", at.display())))?;
            Some((name.clone(), at, fmt))
        }
    };
    let size = match (o.size, &backing) {
        (Some(s), _) => s,
        (None, Some((_, at, fmt))) => backing_size(at, *fmt)?,
        (None, None) => return bad("give the new image a size (--size 20G)".into()),
    };
    if size == 0 || size % 512 != 0 {
        return bad(format!("size {size} is not a positive multiple of 512"));
    }
    let path = o.path.clone();
    let cluster = o.cluster_size as usize;
    let backing = backing.map(|(name, _, fmt)| (name, fmt));
    // (created: whether the file is ours to remove on failure; `create_open` refuses a file
    // that appeared since the check above, and that one is not ours.)
    let r = std::thread::spawn(move || -> (bool, io::Result<()>) {
        let rt = match rt::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => return (false, Err(e)),
        };
        rt.block_on(async {
            let storage =
                match UringFile::create_open(StorageCreateOptions::new().filename(&path)).await {
                    Ok(s) => s,
                    Err(e) => return (false, Err(e)),
                };
            let mut b = Qcow2::<UringFile>::create_builder(storage)
                .size(size)
                .cluster_size(cluster);
            if let Some((name, fmt)) = backing {
                let fmt = match fmt {
                    Format::Qcow2 => "qcow2",
                    _ => "raw",
                };
                b = b.backing(name.to_string_lossy().into_owned(), fmt.into());
            }
            (true, b.create().await)
        })
    })
    .join()
    .map_err(|_| OpenError::Io("the qcow2 create thread panicked".into()))?;
    match r {
        (_, Ok(())) => Ok(()),
        (created, Err(e)) => {
            if created {
                let _ = std::fs::remove_file(&o.path);
            }
            Err(OpenError::Io(format!("creating {}: {e}", o.path.display())))
        }
    }
}

/// The virtual size of a backing image: a qcow2 image's, or a raw file's length.
fn backing_size(at: &Path, fmt: Format) -> Result<u64, OpenError> {
    if fmt != Format::Qcow2 {
        return std::fs::metadata(at)
            .map(|m| m.len())
            .map_err(|e| OpenError::Io(format!("backing image {}: {e}", at.display())));
    }
    let t = Qcow2Target::open(&Qcow2Config {
        path: at.to_path_buf(),
        backing: None,
        no_backing: true,
        buffered: true,
        read_only: true,
    })?;
    Ok(crate::Target::geometry(&t).size)
}
