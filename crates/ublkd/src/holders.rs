//! Who uses a ublk disk: file systems mounted on it or on its partitions, processes that have it
//! open, kernel holders (device mapper, md), swap, loop devices backed by it. `del` refuses a
//! device in use and names the user; before stopping a device in use anyway (`del --force`, or
//! a daemon told to stop), the file systems on it are synced while the daemon still serves.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The disk or one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `ublkbN` or `ublkbNpM`.
    pub name: String,
    pub path: PathBuf,
    /// major:minor
    pub dev: (u32, u32),
}

/// One user of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    Mount { node: String, at: String },
    Open { pid: i32, comm: String },
    Holder { node: String, by: String },
    Swap { node: String },
    Loop { node: String, by: String },
}

fn read_dev(p: &Path) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(p).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The disk `ublkb{id}` and its partitions (none when the disk does not exist).
pub fn nodes(id: u32) -> Vec<Node> {
    let disk = format!("ublkb{id}");
    let base = Path::new("/sys/block").join(&disk);
    let Some(dev) = read_dev(&base.join("dev")) else {
        return vec![];
    };
    let mut v = vec![Node {
        path: PathBuf::from("/dev").join(&disk),
        name: disk.clone(),
        dev,
    }];
    let prefix = format!("{disk}p");
    let mut parts: Vec<Node> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_str()?.to_string();
            name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            let dev = read_dev(&base.join(&name).join("dev"))?;
            Some(Node {
                path: PathBuf::from("/dev").join(&name),
                name,
                dev,
            })
        })
        .collect();
    parts.sort_by_key(|n| n.dev);
    v.extend(parts);
    v
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of `nodes` in a mountinfo text.
fn mounts_in(mountinfo: &str, nodes: &[Node]) -> Vec<Use> {
    let mut v = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(majmin), Some(at)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let Some((a, b)) = majmin.split_once(':') else {
            continue;
        };
        let dev = (a.parse().unwrap_or(u32::MAX), b.parse().unwrap_or(u32::MAX));
        if let Some(n) = nodes.iter().find(|n| n.dev == dev) {
            v.push(Use::Mount {
                node: n.name.clone(),
                at: unescape(at),
            });
        }
    }
    v
}

/// Processes other than this one with one of `nodes` open.
fn openers(nodes: &[Node]) -> Vec<Use> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let has = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| nodes.iter().any(|n| n.path.as_os_str() == l.as_os_str()))
        });
        if has {
            v.push(Use::Open {
                pid,
                comm: crate::identity::comm(pid),
            });
        }
    }
    v
}

/// Kernel holders (device mapper, md, bcache: /sys/block/X/holders), swap areas and loop
/// devices on `nodes`.
fn kernel_users(nodes: &[Node]) -> Vec<Use> {
    let mut v = Vec::new();
    let disk = nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    for n in nodes {
        let dir = if n.name == disk {
            Path::new("/sys/block").join(&n.name).join("holders")
        } else {
            Path::new("/sys/block")
                .join(&disk)
                .join(&n.name)
                .join("holders")
        };
        for h in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = h.file_name().to_string_lossy().into_owned();
            let by = match std::fs::read_to_string(format!("/sys/block/{name}/dm/name")) {
                Ok(dm) => format!("{name} ({})", dm.trim()),
                Err(_) => name,
            };
            v.push(Use::Holder {
                node: n.name.clone(),
                by,
            });
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(path) = line.split_whitespace().next() else {
                continue;
            };
            let Ok(m) = std::fs::metadata(unescape(path)) else {
                continue;
            };
            let dev = (libc::major(m.rdev()), libc::minor(m.rdev()));
            if let Some(n) = nodes.iter().find(|n| n.dev == dev) {
                v.push(Use::Swap {
                    node: n.name.clone(),
                });
            }
        }
    }
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(f) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if let Some(n) = nodes.iter().find(|n| n.path.as_os_str() == f.trim()) {
            v.push(Use::Loop {
                node: n.name.clone(),
                by: name,
            });
        }
    }
    v
}

/// The disk's nodes and everything that uses them.
pub fn scan(id: u32) -> (Vec<Node>, Vec<Use>) {
    let nodes = nodes(id);
    if nodes.is_empty() {
        return (nodes, vec![]);
    }
    let mut uses = mounts_in(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        &nodes,
    );
    uses.extend(kernel_users(&nodes));
    uses.extend(openers(&nodes));
    (nodes, uses)
}

/// One line for the user: what uses device `id`, and what to do about it.
pub fn describe(id: u32, uses: &[Use]) -> String {
    let hint = if uses.iter().all(|u| matches!(u, Use::Mount { .. })) {
        "unmount it, or ublkd del --force"
    } else if uses.iter().all(|u| matches!(u, Use::Open { .. })) {
        "close it, or ublkd del --force"
    } else {
        "ublkd del --force stops it anyway"
    };
    format!("device {id} is {}: {hint}", what(id, uses))
}

/// "mounted on /mnt/x, open by pid 7 (fio)".
pub fn what(id: u32, uses: &[Use]) -> String {
    let disk = format!("ublkb{id}");
    let on = |node: &String| {
        if *node == disk {
            String::new()
        } else {
            format!(" ({node})")
        }
    };
    let mut parts: Vec<String> = Vec::new();
    let mounts: Vec<String> = uses
        .iter()
        .filter_map(|u| match u {
            Use::Mount { node, at } => Some(format!("{at}{}", on(node))),
            _ => None,
        })
        .collect();
    if !mounts.is_empty() {
        parts.push(format!("mounted on {}", list(&mounts)));
    }
    let opens: Vec<String> = uses
        .iter()
        .filter_map(|u| match u {
            Use::Open { pid, comm } => Some(format!("pid {pid} ({comm})")),
            _ => None,
        })
        .collect();
    if !opens.is_empty() {
        parts.push(format!("open by {}", list(&opens)));
    }
    for u in uses {
        match u {
            Use::Holder { node, by } => parts.push(format!("held by {by}{}", on(node))),
            Use::Swap { node } => parts.push(format!("in use as swap{}", on(node))),
            Use::Loop { node, by } => parts.push(format!("backing /dev/{by}{}", on(node))),
            _ => {}
        }
    }
    parts.join(", ")
}

/// "a", "a and b", "a, b and 3 more".
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} more", rest.len()),
    }
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    Done,
    /// A mount point or node could not be opened or synced (the device may already be failing).
    Failed,
    /// Still running after the limit: the device does not complete writes.
    TimedOut,
}

/// Sync what the users of a disk wrote and the disk has not: `syncfs` on every file system
/// mounted on it, `fsync` on the disk and each partition (data written to the nodes directly).
/// In a child process, so that a sync the device never completes holds up only that child
/// (which ends once the device is stopped and its writes fail), not us.
pub fn flush(nodes: &[Node], uses: &[Use], limit: Duration) -> Flushed {
    let cstr = |p: &[u8]| CString::new(p).ok();
    let mounts: Vec<CString> = uses
        .iter()
        .filter_map(|u| match u {
            Use::Mount { at, .. } => cstr(at.as_bytes()),
            _ => None,
        })
        .collect();
    let paths: Vec<CString> = nodes
        .iter()
        .filter_map(|n| cstr(n.path.as_os_str().as_bytes()))
        .collect();
    // SAFETY: the child makes only system calls on memory prepared before the fork, then
    // leaves with _exit; it allocates nothing and takes no lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Flushed::Failed;
    }
    if pid == 0 {
        let mut ok = true;
        // SAFETY: NUL-terminated paths; descriptors we opened and close.
        unsafe {
            for m in &mounts {
                let fd = libc::open(
                    m.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                ok &= fd >= 0 && libc::syncfs(fd) == 0;
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            for p in &paths {
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                ok &= fd >= 0 && libc::fsync(fd) == 0;
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Flushed::Done
            } else {
                Flushed::Failed
            };
        }
        if r < 0 {
            return Flushed::Failed;
        }
        if Instant::now() >= deadline {
            return Flushed::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Vec<Node> {
        vec![
            Node {
                name: "ublkb3".into(),
                path: "/dev/ublkb3".into(),
                dev: (259, 4),
            },
            Node {
                name: "ublkb3p1".into(),
                path: "/dev/ublkb3p1".into(),
                dev: (259, 5),
            },
        ]
    }

    #[test]
    fn mountinfo_finds_the_disk_and_its_partitions() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 259:4 / /mnt/my\\040disk rw,relatime shared:50 - ext4 /dev/ublkb3 rw
99 22 259:5 /sub /srv/p1 rw shared:51 - xfs /dev/ublkb3p1 rw
100 22 259:6 / /other rw shared:52 - ext4 /dev/ublkb4 rw";
        assert_eq!(
            mounts_in(info, &disk()),
            vec![
                Use::Mount {
                    node: "ublkb3".into(),
                    at: "/mnt/my disk".into()
                },
                Use::Mount {
                    node: "ublkb3p1".into(),
                    at: "/srv/p1".into()
                },
            ]
        );
    }

    #[test]
    fn descriptions_name_the_user_in_one_line() {
        let m = Use::Mount {
            node: "ublkb0".into(),
            at: "/mnt/x".into(),
        };
        assert_eq!(
            describe(0, std::slice::from_ref(&m)),
            "device 0 is mounted on /mnt/x: unmount it, or ublkd del --force"
        );
        let o = |pid| Use::Open {
            pid,
            comm: "fio".into(),
        };
        assert_eq!(
            describe(0, &[o(123)]),
            "device 0 is open by pid 123 (fio): close it, or ublkd del --force"
        );
        assert_eq!(
            describe(0, &[o(1), o(2), o(3), o(4)]),
            "device 0 is open by pid 1 (fio), pid 2 (fio) and 2 more: close it, or ublkd del --force"
        );
        let h = Use::Holder {
            node: "ublkb0p2".into(),
            by: "dm-0 (vg-lv)".into(),
        };
        assert_eq!(
            describe(0, &[m, o(7), h]),
            "device 0 is mounted on /mnt/x, open by pid 7 (fio), held by dm-0 (vg-lv) (ublkb0p2): ublkd del --force stops it anyway"
        );
    }

    #[test]
    fn an_absent_disk_has_no_nodes_and_no_users() {
        assert_eq!(scan(4_000_000), (vec![], vec![]));
    }

    #[test]
    fn flush_syncs_a_mount_point_and_a_file_in_a_child() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let node = Node {
            name: "f".into(),
            path: f,
            dev: (0, 0),
        };
        let m = Use::Mount {
            node: "f".into(),
            at: d.path().to_string_lossy().into_owned(),
        };
        assert_eq!(flush(&[node], &[m], Duration::from_secs(30)), Flushed::Done);
        let bad = Use::Mount {
            node: "f".into(),
            at: "/nonexistent/mount".into(),
        };
        assert_eq!(flush(&[], &[bad], Duration::from_secs(30)), Flushed::Failed);
    }
}
