//! Link librbd and librados (Debian: librbd-dev, librados-dev). Fail with one clear line when
//! they are missing instead of a linker error.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ];
    for lib in ["librbd.so", "librados.so"] {
        if !dirs
            .iter()
            .any(|d| std::path::Path::new(d).join(lib).exists())
        {
            panic!(
                "{lib} not found: the rbd target links librbd and librados \
                 (apt-get install librbd-dev librados-dev, or scripts/install-deps.sh)"
            );
        }
    }
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rustc-link-lib=dylib=rados");
}
