//! The qcow2 target against QEMU's own tools: images made and written by qemu-img/qemu-io read
//! back right through us, images we write pass `qemu-img check` and compare equal, backing
//! chains, compressed images, discard, concurrent allocation from several queues, and every
//! image we must refuse gives one line. A missing qemu-img is a loud SKIP (a failure under CI).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use targets::kind::TargetKind;
use targets::qcow2::{Qcow2Config, Qcow2Target};
use targets::{IoBuf, Target, TargetQueue};

fn have(prog: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{prog} is required under CI"
        );
        eprintln!("\n*** SKIP: {prog} not installed; this test did not run ***\n");
    }
    ok
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn config(path: &Path) -> Qcow2Config {
    Qcow2Config {
        path: path.to_path_buf(),
        backing: None,
        no_backing: false,
        buffered: false,
        read_only: false,
    }
}

/// Deterministic bytes, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Run `f` on a runtime of its own, on this thread, with queue `qid` of `t`.
fn on_queue<R>(
    t: &Qcow2Target,
    qid: u16,
    f: impl AsyncFnOnce(&targets::qcow2::Qcow2Queue) -> R,
) -> R {
    let q = t.open_queue(qid).unwrap();
    rt::Runtime::new().unwrap().block_on(f(&q))
}

async fn write(q: &impl TargetQueue, off: u64, data: &[u8]) {
    let mut b = IoBuf::with_capacity(data.len());
    b.as_mut_slice().copy_from_slice(data);
    q.write(off, &b, false).await.unwrap();
}

async fn read(q: &impl TargetQueue, off: u64, len: usize) -> Vec<u8> {
    let mut b = IoBuf::with_capacity(len);
    q.read(off, &mut b).await.unwrap();
    b.as_slice().to_vec()
}

/// The image as raw bytes, by qemu-img.
fn as_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("converted.raw");
    run_ok(&["qemu-img", "convert", "-O", "raw", s(img), s(&out)]);
    std::fs::read(out).unwrap()
}

fn check_clean(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", s(img)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("No errors were found"), "{text}");
}

#[test]
fn writes_through_us_read_back_in_qemu_and_pass_check() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    run_ok(&["qemu-img", "create", "-q", "-f", "qcow2", s(&img), "64M"]);
    let mut expect = vec![0u8; 64 << 20];
    let t = Qcow2Target::open(&config(&img)).unwrap();
    assert_eq!(t.geometry().size, 64 << 20);
    // Partial clusters, cluster-crossing writes, a large one, rewrites.
    let writes: &[(u64, usize, u64)] = &[
        (0, 4096, 1),
        (65536 - 512, 1024, 2),
        (1 << 20, 512 << 10, 3),
        (5 << 20, 4096, 4),
        (4096, 8192, 5),
        (63 << 20, 1 << 20, 6),
    ];
    on_queue(&t, 0, async |q| {
        for &(off, len, seed) in writes {
            let d = pattern(len, seed);
            write(q, off, &d).await;
            expect[off as usize..off as usize + len].copy_from_slice(&d);
        }
        q.flush().await.unwrap();
        for &(off, len, _) in writes {
            assert_eq!(
                read(q, off, len).await,
                &expect[off as usize..off as usize + len]
            );
        }
    });
    drop(t);
    check_clean(&img);
    assert!(
        as_raw(&img, dir.path()) == expect,
        "qemu-img sees other bytes"
    );
}

/// A file in memory (tmpfs) is read and written with blocking calls on the queue thread: the
/// same bytes, the same clean image.
#[test]
fn an_image_in_memory_is_served_inline() {
    if !have("qemu-img") || !Path::new("/dev/shm").is_dir() {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let img = dir.path().join("m.qcow2");
    run_ok(&["qemu-img", "create", "-q", "-f", "qcow2", s(&img), "8M"]);
    let t = Qcow2Target::open(&config(&img)).unwrap();
    assert!(t.notes()[0].contains("inline"), "{:?}", t.notes());
    let data = pattern(3 << 20, 21);
    on_queue(&t, 0, async |q| {
        write(q, 4096, &data).await;
        assert!(read(q, 4096, 3 << 20).await == data);
        q.flush().await.unwrap();
    });
    drop(t);
    check_clean(&img);
    assert!(as_raw(&img, dir.path())[4096..4096 + (3 << 20)] == data[..]);
}

#[test]
fn images_written_by_qemu_io_read_back_through_us() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.qcow2");
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&img),
        "16M",
    ]);
    run_ok(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0xab 12k 20k",
        "-c",
        "write -z 16k 4k",
        s(&img),
    ]);
    let t = Qcow2Target::open(&config(&img)).unwrap();
    on_queue(&t, 0, async |q| {
        let got = read(q, 8192, 32768).await;
        assert!(got[..4096].iter().all(|&b| b == 0), "before the write");
        assert!(got[4096..8192].iter().all(|&b| b == 0xab));
        assert!(got[8192..12288].iter().all(|&b| b == 0), "write -z");
        assert!(got[12288..24576].iter().all(|&b| b == 0xab));
        assert!(got[24576..].iter().all(|&b| b == 0), "after the write");
    });
}

#[test]
fn backing_chains_copy_on_write_and_resolve_relative_names() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_data = pattern(8 << 20, 9);
    std::fs::write(&base, &base_data).unwrap();
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    // Relative names, as QEMU resolves them: relative to the image naming them.
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
    ]);
    run_ok(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 1M 64k",
        "-c",
        "write -P 0x22 5M 64k",
        s(&mid),
    ]);
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    let mut expect = base_data.clone();
    expect[1 << 20..(1 << 20) + 65536].fill(0x11);
    expect[5 << 20..(5 << 20) + 65536].fill(0x22);
    let t = Qcow2Target::open(&config(&top)).unwrap();
    assert!(
        t.notes()[0].contains("backing file mid.qcow2"),
        "{:?}",
        t.notes()
    );
    on_queue(&t, 0, async |q| {
        assert!(
            read(q, 0, 2 << 20).await == expect[..2 << 20],
            "reads through the chain"
        );
        // A 4 KiB write into a cluster that only the base has: the rest of the cluster must be
        // copied up from the chain.
        let d = pattern(4096, 10);
        write(q, (3 << 20) + 8192, &d).await;
        expect[(3 << 20) + 8192..(3 << 20) + 12288].copy_from_slice(&d);
        let d = pattern(512, 11);
        write(q, (1 << 20) + 100 * 512, &d).await;
        expect[(1 << 20) + 51200..(1 << 20) + 51712].copy_from_slice(&d);
        assert!(read(q, 3 << 20, 65536).await == expect[3 << 20..(3 << 20) + 65536]);
        q.flush().await.unwrap();
    });
    drop(t);
    check_clean(&top);
    assert!(
        as_raw(&top, dir.path()) == expect,
        "the chain as qemu-img reads it differs"
    );
    // The base is untouched; --no-backing sees only the top's own clusters.
    assert!(std::fs::read(&base).unwrap() == base_data);
    let mut c = config(&top);
    c.no_backing = true;
    let t = Qcow2Target::open(&c).unwrap();
    on_queue(&t, 0, async |q| {
        assert!(read(q, 0, 4096).await.iter().all(|&b| b == 0));
        assert_eq!(read(q, (3 << 20) + 8192, 4096).await, pattern(4096, 10));
    });
    // --backing overrides the header (here: straight to the raw base, skipping mid).
    let mut c = config(&top);
    c.backing = Some(base.clone());
    let t = Qcow2Target::open(&c).unwrap();
    on_queue(&t, 0, async |q| {
        assert!(read(q, 5 << 20, 4096).await == base_data[5 << 20..(5 << 20) + 4096]);
    });
}

#[test]
fn compressed_images_read_back_equal() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = pattern(4 << 20, 12);
    // Compressible halves.
    for c in data.chunks_mut(65536).step_by(2) {
        c.fill(0x42);
    }
    std::fs::write(&raw, &data).unwrap();
    let img = dir.path().join("c.qcow2");
    run_ok(&["qemu-img", "convert", "-c", "-O", "qcow2", s(&raw), s(&img)]);
    let t = Qcow2Target::open(&config(&img)).unwrap();
    on_queue(&t, 0, async |q| {
        assert!(
            read(q, 0, 4 << 20).await == data,
            "compressed clusters read back"
        );
        // Writing into a compressed cluster re-allocates it.
        let d = pattern(4096, 13);
        write(q, 70000 / 512 * 512, &d).await;
        q.flush().await.unwrap();
    });
    drop(t);
    check_clean(&img);
}

#[test]
fn discard_deallocates_and_map_shows_it() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    run_ok(&["qemu-img", "create", "-q", "-f", "qcow2", s(&img), "16M"]);
    let t = Qcow2Target::open(&config(&img)).unwrap();
    on_queue(&t, 0, async |q| {
        write(q, 0, &pattern(4 << 20, 14)).await;
        q.discard(1 << 20, 2 << 20).await.unwrap();
        assert!(read(q, 1 << 20, 2 << 20).await.iter().all(|&b| b == 0));
        q.write_zeroes(3 << 20, 65536, false).await.unwrap();
        assert!(read(q, 3 << 20, 65536).await.iter().all(|&b| b == 0));
        let ext = q.block_status(0, 4 << 20).await.unwrap();
        assert!(!ext[0].hole && ext[0].len == 1 << 20, "{ext:?}");
        assert!(ext[1].hole && ext[1].zero, "{ext:?}");
        q.flush().await.unwrap();
    });
    drop(t);
    check_clean(&img);
    let map = run_ok(&["qemu-img", "map", "--output=json", s(&img)]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let at = |off: u64| {
        v.iter()
            .find(|e| {
                e["start"].as_u64().unwrap() <= off
                    && off < e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap()
            })
            .unwrap()
            .clone()
    };
    assert_eq!(at(0)["data"], true, "{map}");
    assert_eq!(
        at(2 << 20)["data"],
        false,
        "discarded clusters are gone: {map}"
    );
    assert_eq!(at(2 << 20)["zero"], true, "{map}");
}

/// Several queues (threads) write into the same unallocated clusters at once: each cluster is
/// allocated once, every write lands, and the image checks clean.
#[test]
fn queues_allocate_concurrently_without_double_allocation() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mq.qcow2");
    run_ok(&["qemu-img", "create", "-q", "-f", "qcow2", s(&img), "32M"]);
    let t = Arc::new(Qcow2Target::open(&config(&img)).unwrap());
    // Queue q writes 4 KiB block q of every 16 KiB, across 8 MiB: 4 writers share each cluster.
    let hs: Vec<_> = (0..4u16)
        .map(|qid| {
            let t = t.clone();
            std::thread::spawn(move || {
                let q = Arc::new(t.open_queue(qid).unwrap());
                let rt = rt::Runtime::new().unwrap();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..512u64)
                        .map(|i| {
                            let q = q.clone();
                            rt::spawn(async move {
                                let off = i * 16384 + qid as u64 * 4096;
                                write(&*q, off, &pattern(4096, off)).await;
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                });
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    on_queue(&t, 0, async |q| q.flush().await.unwrap());
    drop(t);
    check_clean(&img);
    let raw = as_raw(&img, dir.path());
    for i in 0..2048u64 {
        let off = i * 4096;
        assert!(
            raw[off as usize..off as usize + 4096] == pattern(4096, off),
            "block {i}"
        );
    }
}

/// Every image we cannot serve is refused in one line naming it, before anything is created.
#[test]
fn unsupported_images_are_refused_in_one_line() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refuse = |img: &Path, want: &str| {
        let e = match Qcow2Target::open(&config(img)) {
            Ok(_) => panic!("{} opened", img.display()),
            Err(e) => e.to_string(),
        };
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains(want), "{}: {e}", img.display());
    };
    // Missing backing file.
    let b = d.join("nobase.qcow2");
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        s(&b),
        "1M",
    ]);
    refuse(&b, "gone.raw");
    // An unknown incompatible feature bit (header offset 72, big-endian u64; bit 40).
    let u = d.join("unknown.qcow2");
    run_ok(&["qemu-img", "create", "-q", "-f", "qcow2", s(&u), "1M"]);
    let mut h = std::fs::read(&u).unwrap();
    h[72 + 2] |= 1;
    std::fs::write(&u, &h).unwrap();
    refuse(&u, "unknown.qcow2");
    // A dirty image (incompatible bit 0: refcounts may be stale).
    let dirty = d.join("dirty.qcow2");
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        s(&dirty),
        "1M",
    ]);
    let mut h = std::fs::read(&dirty).unwrap();
    h[72 + 7] |= 1;
    std::fs::write(&dirty, &h).unwrap();
    refuse(&dirty, "dirty.qcow2");
    // An external data file.
    let ext = d.join("ext.qcow2");
    let data = d.join("ext.data");
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&ext),
        "1M",
    ]);
    refuse(&ext, "external data file");
    // A header naming a device as its backing (the daemon runs as root).
    let devb = d.join("devback.qcow2");
    run_ok(&[
        "qemu-img",
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "/dev/null",
        "-F",
        "raw",
        s(&devb),
        "1M",
    ]);
    refuse(&devb, "not a regular file");
    // Not qcow2 at all.
    let raw = d.join("plain.raw");
    std::fs::write(&raw, vec![0u8; 65536]).unwrap();
    refuse(&raw, "not a qcow2 image");
    // Missing image.
    refuse(&d.join("none.qcow2"), "No such file");
    // Encrypted (LUKS needs a secret object).
    let enc = d.join("enc.qcow2");
    let r = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=x",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
            s(&enc),
            "1M",
        ])
        .output()
        .unwrap();
    if r.status.success() {
        refuse(&enc, "is encrypted");
    }
    // zstd-compressed clusters (the header's compression type).
    let z = d.join("zstd.qcow2");
    let r = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            s(&z),
            "1M",
        ])
        .output()
        .unwrap();
    // imago reads only zlib-compressed clusters: refused, not misread.
    if r.status.success() {
        refuse(&z, "compression type");
    }
}
