//! The C interface of librados and librbd that this crate uses, declared by hand from Debian's
//! `rados/librados.h` and `rbd/librbd.h` (Ceph 16.2; every call here exists since 15.2), and
//! resolved from `librbd.so.1` at run time ([`load`]), not linked. Only this module declares
//! foreign functions; `image.rs` is the only caller, and states at each
//! `unsafe` block which of the rules below it relies on.
//!
//! Rules of the C API (from the headers and librbd's documented behaviour):
//! - Handles (`rados_t`, `rados_ioctx_t`, `rbd_image_t`) are opaque pointers. librados and
//!   librbd are thread-safe: one image handle may be used from any number of threads at once.
//!   A handle must outlive every call and every asynchronous operation on it: `rbd_close`
//!   waits for nothing we started, so all of our completions must be reaped before it.
//! - `rbd_aio_*` calls take a completion from `rbd_aio_create_completion`. Our callback is
//!   NULL: with `rbd_set_image_notification(image, eventfd, EVENT_TYPE_EVENTFD)` librbd instead
//!   queues each finished completion on the image and writes to the eventfd, and
//!   `rbd_poll_io_events` hands queued completions out (each exactly once). Only then is it
//!   ours to read (`rbd_aio_get_return_value`, `rbd_aio_get_arg`) and free (`rbd_aio_release`,
//!   exactly once). A completion whose `rbd_aio_*` call failed was never queued: free it at once.
//! - Buffers passed to `rbd_aio_read*`/`rbd_aio_write*` (and the memory an iovec points to) are
//!   read or written by librbd's threads until the completion is polled out. The iovec array
//!   itself is copied during the call.
//! - Every function returns 0 or a non-negative count on success and a negative errno on
//!   failure, except `rbd_aio_get_return_value` (bytes or negative errno), `rados_shutdown`,
//!   `rados_ioctx_destroy` and `rbd_aio_release` (void).

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub type rados_t = *mut c_void;
pub type rados_ioctx_t = *mut c_void;
pub type rbd_image_t = *mut c_void;
pub type rbd_completion_t = *mut c_void;
/// `void (*)(rbd_completion_t cb, void *arg)`; always NULL here (completions are polled).
pub type rbd_callback_t = Option<unsafe extern "C" fn(rbd_completion_t, *mut c_void)>;
/// `int (*)(uint64_t offset, size_t len, int exists, void *arg)` for `rbd_diff_iterate2`;
/// a negative return stops the iteration with that value.
pub type rbd_diff_cb_t = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `EVENT_TYPE_EVENTFD` (librbd.h): the notification fd is an eventfd.
pub const EVENT_TYPE_EVENTFD: c_int = 2;
/// `LIBRADOS_OP_FLAG_FADVISE_FUA` (librados.h): a write that must be durable when it completes.
pub const LIBRADOS_OP_FLAG_FADVISE_FUA: c_int = 0x80;
/// `RBD_FEATURE_EXCLUSIVE_LOCK` (rbd/features.h).
pub const RBD_FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_FEATURE_FAST_DIFF` (rbd/features.h).
pub const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FLAG_FAST_DIFF_INVALID` (librbd.h): the fast-diff map must not be trusted.
pub const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;

/// Where the libraries are looked up (their sonames: the runtime packages, librbd1 and
/// librados2, not the -dev ones).
const LIBRBD: &str = "librbd.so.1";

macro_rules! api {
    ($( $(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        /// The functions, resolved from librbd (which brings librados) when the first cluster
        /// is connected.
        struct Api {
            $( $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
            /// Kept loaded for the life of the process (the pointers above point into it).
            _lib: libloading::Library,
        }

        impl Api {
            fn load() -> Result<Api, String> {
                // SAFETY: loading librbd runs its (and librados') initialisers, which have no
                // preconditions; it is loaded once per process (OnceLock) and never unloaded.
                let lib = unsafe { libloading::Library::new(LIBRBD) }
                    .map_err(|e| format!("-t rbd needs librbd (Debian: apt-get install librbd1): {e}"))?;
                // SAFETY: each symbol is the C function of that name, whose type the
                // declaration below states as the headers do (checked against them by the
                // test at the end of this file); the library stays loaded in `_lib`.
                unsafe {
                    Ok(Api {
                        $( $name: *lib
                            .get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                            .map_err(|e| format!("{LIBRBD}: {e}"))?, )*
                        _lib: lib,
                    })
                }
            }
        }

        $(
            $(#[$m])*
            /// # Safety
            /// As the C function's (module docs); [`load`] must have succeeded.
            #[allow(clippy::too_many_arguments)] // the C signature's
            pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the caller's contract.
                unsafe { (api().$name)($($arg),*) }
            }
        )*
    };
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// Load librbd and librados (once per process). Every call below needs it: `Cluster::connect`,
/// the only way to a handle, calls it first. Loading them on demand keeps every other command
/// fast: their C++ start-up work cost 25 ms per `ublkd` run on the host, and seconds in a TCG
/// guest, when the binary linked them.
pub fn load() -> std::io::Result<()> {
    match API.get_or_init(Api::load) {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.clone())),
    }
}

fn api() -> &'static Api {
    match API.get() {
        Some(Ok(a)) => a,
        _ => panic!("librbd used before rbd::ffi::load succeeded"),
    }
}

api! {
    // librados
    pub fn rados_create2(
        cluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    pub fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: rados_t) -> c_int;
    pub fn rados_shutdown(cluster: rados_t);
    pub fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);

    // librbd: images
    pub fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: rbd_image_t) -> c_int;
    pub fn rbd_get_size(image: rbd_image_t, size: *mut u64) -> c_int;
    pub fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    pub fn rbd_get_flags(image: rbd_image_t, flags: *mut u64) -> c_int;
    pub fn rbd_set_image_notification(image: rbd_image_t, fd: c_int, type_: c_int) -> c_int;
    pub fn rbd_poll_io_events(
        image: rbd_image_t,
        comps: *mut rbd_completion_t,
        numcomp: c_int,
    ) -> c_int;
    pub fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: rbd_diff_cb_t,
        arg: *mut c_void,
    ) -> c_int;

    // librbd: asynchronous I/O
    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;
    pub fn rbd_aio_get_arg(c: rbd_completion_t) -> *mut c_void;
    pub fn rbd_aio_release(c: rbd_completion_t);
    pub fn rbd_aio_readv(
        image: rbd_image_t,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_writev(
        image: rbd_image_t,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_write2(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_discard(image: rbd_image_t, off: u64, len: u64, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: rbd_image_t,
        off: u64,
        len: usize,
        c: rbd_completion_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_flush(image: rbd_image_t, c: rbd_completion_t) -> c_int;
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// The constants above are the headers' own: a C program compiled against Debian's
    /// librbd-dev/librados-dev prints them (and links both libraries).
    #[test]
    fn constants_match_the_installed_headers() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("c.c");
        let exe = dir.path().join("c");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
int main(void) {
    printf("%d %d %llu %llu %llu\n", EVENT_TYPE_EVENTFD, LIBRADOS_OP_FLAG_FADVISE_FUA,
           (unsigned long long)RBD_FEATURE_EXCLUSIVE_LOCK,
           (unsigned long long)RBD_FEATURE_FAST_DIFF,
           (unsigned long long)RBD_FLAG_FAST_DIFF_INVALID);
    /* Every function we declare exists with a compatible type. */
    void *fns[] = { (void *)rados_create2, (void *)rados_conf_read_file, (void *)rados_conf_set,
        (void *)rados_connect, (void *)rados_shutdown, (void *)rados_ioctx_create,
        (void *)rados_ioctx_destroy, (void *)rados_ioctx_set_namespace, (void *)rbd_open,
        (void *)rbd_open_read_only, (void *)rbd_close, (void *)rbd_get_size,
        (void *)rbd_get_features, (void *)rbd_get_flags, (void *)rbd_set_image_notification,
        (void *)rbd_poll_io_events, (void *)rbd_diff_iterate2, (void *)rbd_aio_create_completion,
        (void *)rbd_aio_get_return_value, (void *)rbd_aio_get_arg, (void *)rbd_aio_release,
        (void *)rbd_aio_readv, (void *)rbd_aio_writev, (void *)rbd_aio_write2,
        (void *)rbd_aio_discard, (void *)rbd_aio_write_zeroes, (void *)rbd_aio_flush };
    (void)fns;
    return 0;
}
"#,
        )
        .unwrap();
        let st = Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .args(["-lrbd", "-lrados"])
            .status()
            .expect("run cc");
        assert!(st.success(), "cc failed");
        let out = Command::new(&exe).output().unwrap();
        let got = String::from_utf8(out.stdout).unwrap();
        let want = format!(
            "{} {} {} {} {}\n",
            super::EVENT_TYPE_EVENTFD,
            super::LIBRADOS_OP_FLAG_FADVISE_FUA,
            super::RBD_FEATURE_EXCLUSIVE_LOCK,
            super::RBD_FEATURE_FAST_DIFF,
            super::RBD_FLAG_FAST_DIFF_INVALID
        );
        assert_eq!(got, want);
    }
}
