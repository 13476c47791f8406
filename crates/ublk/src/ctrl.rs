//! The control device `/dev/ublk-control`: device lifecycle commands, each an
//! `IORING_OP_URING_CMD` with a 32-byte `ublksrv_ctrl_cmd` in a 128-byte SQE. Commands are rare
//! and may block in the kernel (START_DEV waits for every tag to be fetched), so this is a small
//! synchronous ring of its own, separate from the queues' data path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::uapi::*;

pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Why the control device could not be used, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{CONTROL_PATH} does not exist: the ublk_drv module is not loaded (run: modprobe ublk_drv)"
    )]
    NoDriver,
    #[error(
        "permission denied on {CONTROL_PATH}: run as root, or install contrib/udev/70-ublkd-unprivileged.rules so users can add --unprivileged devices"
    )]
    NotRoot,
    #[error("cannot open {CONTROL_PATH}: {0}")]
    Other(io::Error),
}

/// Whether device `id`'s char device is registered (DEL_DEV unregisters it before it waits).
pub fn char_dev_exists(id: u32) -> bool {
    let class = std::path::Path::new("/sys/class/ublk-char");
    if class.is_dir() {
        class.join(format!("ublkc{id}")).exists()
    } else {
        std::path::Path::new(&format!("/dev/ublkc{id}")).exists()
    }
}

pub struct Control {
    fd: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// A command was abandoned in flight (the ring failed under it): its buffer is leaked and
    /// no further command goes out on this ring.
    broken: bool,
    /// Devices seen so far and whether each is unprivileged (see `needs_path`).
    unprivileged: Vec<(u32, bool)>,
}

impl Control {
    pub fn open() -> Result<Control, ControlError> {
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ControlError::NoDriver,
                io::ErrorKind::PermissionDenied => ControlError::NotRoot,
                _ => ControlError::Other(e),
            })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(4)
            .map_err(ControlError::Other)?;
        Ok(Control {
            fd,
            ring,
            broken: false,
            unprivileged: Vec::new(),
        })
    }

    /// Issue one command on device `c.dev_id` that names no memory (but the device path, for
    /// an unprivileged device) and wait for its result (>= 0) or errno.
    fn cmd(&mut self, op: u32, c: ublksrv_ctrl_cmd) -> io::Result<i32> {
        self.cmd_abortable(op, c, &|| false)
    }

    /// Like `cmd`, but every 20 ms ask `abort`; once it says yes, cancel the command (see
    /// `cmd_raw`).
    fn cmd_abortable(
        &mut self,
        op: u32,
        c: ublksrv_ctrl_cmd,
        abort: &dyn Fn() -> bool,
    ) -> io::Result<i32> {
        self.cmd_data::<NoData>(op, c, None, abort).map(|(r, _)| r)
    }

    /// Issue one command whose data buffer holds `data` (the driver reads it, writes it, or
    /// both) and return what the driver left there. For an unprivileged device the buffer
    /// starts with the char device's path (`dev_path_len`), which the driver checks the
    /// caller's permission on and skips before it reads or writes the data.
    fn cmd_data<T: Pod>(
        &mut self,
        op: u32,
        mut c: ublksrv_ctrl_cmd,
        data: Option<T>,
        abort: &dyn Fn() -> bool,
    ) -> io::Result<(i32, Option<T>)> {
        let path = if self.needs_path(op, c.dev_id) {
            char_dev_path(c.dev_id)
        } else {
            Vec::new()
        };
        let size = data.map_or(0, |_| std::mem::size_of::<T>());
        if path.is_empty() && size == 0 {
            return self.cmd_raw(op, c, None, abort).map(|(r, _)| (r, None));
        }
        let mut buf = vec![0u8; path.len() + size];
        buf[..path.len()].copy_from_slice(&path);
        if let Some(d) = data {
            // SAFETY: `buf` has `size_of::<T>()` bytes after the path; T is plain data (Pod).
            unsafe { std::ptr::write_unaligned(buf[path.len()..].as_mut_ptr().cast::<T>(), d) };
        }
        c.dev_path_len = path.len() as u16;
        let (r, buf) = self.cmd_raw(op, c, Some(buf.into_boxed_slice()), abort)?;
        let out = data.map(|_| {
            let buf = buf.expect("buffer handed back");
            // SAFETY: as above; any bytes the driver wrote are a valid T (Pod), and
            // read_unaligned copes with the path's odd length.
            unsafe { std::ptr::read_unaligned(buf[path.len()..].as_ptr().cast::<T>()) }
        });
        Ok((r, out))
    }

    /// Whether command `op` on device `dev_id` must carry the char device path: every command
    /// on an unprivileged device but ADD_DEV (GET_FEATURES names no device; GET_DEV_INFO2
    /// always carries it). Learnt once per device from GET_DEV_INFO2; a device that cannot be
    /// asked gets no path, and the command itself reports why.
    fn needs_path(&mut self, op: u32, dev_id: u32) -> bool {
        if op == UBLK_U_CMD_ADD_DEV || op == UBLK_U_CMD_GET_FEATURES {
            return false;
        }
        if op == UBLK_U_CMD_GET_DEV_INFO2 {
            return true;
        }
        if let Some(&(_, unpriv)) = self.unprivileged.iter().find(|(id, _)| *id == dev_id) {
            return unpriv;
        }
        // The legacy query is get_dev_info's own fallback: asking get_dev_info would recurse.
        if op == UBLK_U_CMD_GET_DEV_INFO {
            return false;
        }
        self.get_dev_info(dev_id)
            .is_ok_and(|i| i.flags & UBLK_F_UNPRIVILEGED_DEV != 0)
    }

    /// Remember whether a device is unprivileged (from its info).
    fn learn(&mut self, info: &ublksrv_ctrl_dev_info) {
        let unpriv = info.flags & UBLK_F_UNPRIVILEGED_DEV != 0;
        self.unprivileged.retain(|(id, _)| *id != info.dev_id);
        self.unprivileged.push((info.dev_id, unpriv));
    }

    /// Issue one command whose `addr`/`len` name `data` and wait for its result; `data` comes
    /// back with what the driver wrote. The ring owns `data` while the driver may touch it: if
    /// waiting fails with the command still in flight, `data` is leaked and the ring refuses
    /// further commands.
    ///
    /// Every 20 ms ask `abort`; once it says yes, cancel the command. The driver runs control
    /// commands on an io-wq worker, and cancelling one interrupts its interruptible wait
    /// (START_DEV and END_USER_RECOVERY wait for every tag of every queue, forever if a queue
    /// thread died before fetching). The command then ends with EINTR or ECANCELED.
    fn cmd_raw(
        &mut self,
        op: u32,
        mut c: ublksrv_ctrl_cmd,
        mut data: Option<Box<[u8]>>,
        abort: &dyn Fn() -> bool,
    ) -> io::Result<(i32, Option<Box<[u8]>>)> {
        if self.broken {
            return Err(io::Error::other(
                "control ring unusable after an earlier failure",
            ));
        }
        (c.addr, c.len) = match data.as_deref_mut() {
            Some(d) => (
                d.as_mut_ptr() as u64,
                u16::try_from(d.len())
                    .map_err(|_| io::Error::other("control command buffer too large"))?,
            ),
            None => (0, 0),
        };
        let mut bytes = [0u8; 80];
        // SAFETY: ublksrv_ctrl_cmd is 32 bytes of plain data; we copy it into the payload.
        let raw: [u8; 32] = unsafe { std::mem::transmute(c) };
        bytes[..32].copy_from_slice(&raw);
        let e = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), op)
            .cmd(bytes)
            .build()
            .user_data(1);
        // SAFETY: the only memory the command names is `data`'s heap allocation (`c.addr`),
        // which does not move when the box does; it is freed only after the completion below,
        // or leaked if we stop waiting for it.
        unsafe { self.ring.submission().push(&e) }
            .map_err(|_| io::Error::other("control ring full"))?;
        let mut cancelled = false;
        let res = loop {
            let ts = types::Timespec::new().nsec(20_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => {}
                Err(e) => {
                    // The command may be in the driver, or still queued for the next enter:
                    // either way the driver may yet use `data`.
                    self.broken = true;
                    if let Some(d) = data {
                        Box::leak(d);
                    }
                    return Err(e);
                }
            }
            // Completions of the cancel request itself (user_data 2) are not ours to report.
            if let Some(cqe) = self.ring.completion().find(|c| c.user_data() == 1) {
                break cqe.result();
            }
            if !cancelled && abort() {
                let cancel = opcode::AsyncCancel::new(1).build().user_data(2);
                // SAFETY: a cancel request carries no pointers.
                if unsafe { self.ring.submission().push(&cancel.into()) }.is_ok() {
                    cancelled = true;
                }
            }
        };
        // Whether or not the cancel itself completed yet, nothing of it points into memory.
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok((res, data))
        }
    }

    fn header(dev_id: u32) -> ublksrv_ctrl_cmd {
        ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            ..Default::default()
        }
    }

    /// Features this kernel's driver supports (Linux 6.5+; older kernels: EOPNOTSUPP/EINVAL).
    pub fn get_features(&mut self) -> io::Result<u64> {
        let c = Self::header(u32::MAX);
        let (_, v) = self.cmd_data(UBLK_U_CMD_GET_FEATURES, c, Some(0u64), &|| false)?;
        Ok(v.expect("data handed back"))
    }

    /// Create a device. `info.dev_id` is the wanted id or `u32::MAX` for any; on return `info`
    /// holds what the kernel granted (id, queues, depth, flags).
    pub fn add_dev(&mut self, info: &mut ublksrv_ctrl_dev_info) -> io::Result<()> {
        let c = Self::header(info.dev_id);
        let (_, out) = self.cmd_data(UBLK_U_CMD_ADD_DEV, c, Some(*info), &|| false)?;
        *info = out.expect("data handed back");
        self.learn(info);
        Ok(())
    }

    pub fn set_params(&mut self, dev_id: u32, params: &ublk_params) -> io::Result<()> {
        let mut p = *params;
        p.len = std::mem::size_of::<ublk_params>() as u32;
        let c = Self::header(dev_id);
        self.cmd_data(UBLK_U_CMD_SET_PARAMS, c, Some(p), &|| false)
            .map(drop)
    }

    pub fn get_params(&mut self, dev_id: u32) -> io::Result<ublk_params> {
        let p = ublk_params {
            len: std::mem::size_of::<ublk_params>() as u32,
            ..Default::default()
        };
        let c = Self::header(dev_id);
        let (_, p) = self.cmd_data(UBLK_U_CMD_GET_PARAMS, c, Some(p), &|| false)?;
        Ok(p.expect("data handed back"))
    }

    /// Start serving: blocks until every queue has fetched every tag, then adds the disk.
    /// Gives up (EINTR/ECANCELED) once `abort` says a queue will never fetch.
    pub fn start_dev(
        &mut self,
        dev_id: u32,
        daemon_pid: i32,
        abort: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let mut c = Self::header(dev_id);
        c.data[0] = daemon_pid as u64;
        self.cmd_abortable(UBLK_U_CMD_START_DEV, c, abort).map(drop)
    }

    /// Remove the disk; the queues' pending fetches complete with UBLK_IO_RES_ABORT.
    pub fn stop_dev(&mut self, dev_id: u32) -> io::Result<()> {
        self.cmd(UBLK_U_CMD_STOP_DEV, Self::header(dev_id))
            .map(drop)
    }

    /// STOP_DEV, or with `only_if_unused` TRY_STOP_DEV (UBLK_F_SAFE_STOP_DEV, Linux 7.0+), which
    /// fails with EBUSY while anything has the disk open and, once it has checked, turns new
    /// openers away until the disk is gone. `tick` runs every 20 ms while the driver works (it
    /// runs the file system's last writes through del_gendisk, and waits for requests in flight
    /// to complete): a caller can end a daemon that does not serve them. An uninterruptible
    /// wait, so the command itself is never cancelled.
    pub fn stop_dev_with(
        &mut self,
        dev_id: u32,
        only_if_unused: bool,
        tick: &dyn Fn(),
    ) -> io::Result<()> {
        let op = if only_if_unused {
            UBLK_U_CMD_TRY_STOP_DEV
        } else {
            UBLK_U_CMD_STOP_DEV
        };
        self.cmd_abortable(op, Self::header(dev_id), &|| {
            tick();
            false
        })
        .map(drop)
    }

    /// Delete the device, waiting at most `limit` for DEL_DEV, which returns only once the
    /// device's last reference is gone: its char device closed, and its disk released by every
    /// opener (a file system still mounted on a stopped disk holds it until unmounted). Ok(true):
    /// deleted and its id free; Ok(false): deleted (the char device is gone), but something
    /// still holds the old disk, so the id stays taken until that lets go.
    pub fn del_dev(&mut self, dev_id: u32, limit: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + limit;
        let r = self.cmd_abortable(UBLK_U_CMD_DEL_DEV, Self::header(dev_id), &|| {
            Instant::now() >= deadline
        });
        match r {
            Ok(_) => Ok(true),
            // Interrupted in its wait for the last reference (the removal itself came first),
            // or cancelled before it ran: the char device tells which.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECANCELED)) => {
                if char_dev_exists(dev_id) {
                    Err(e)
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Device info. Tries GET_DEV_INFO2 (which carries the char device path, so it works on an
    /// unprivileged device for its owner) and falls back to the legacy command on kernels
    /// without it.
    pub fn get_dev_info(&mut self, dev_id: u32) -> io::Result<ublksrv_ctrl_dev_info> {
        let c = Self::header(dev_id);
        let info = ublksrv_ctrl_dev_info::default();
        let r = self.cmd_data(UBLK_U_CMD_GET_DEV_INFO2, c, Some(info), &|| false);
        let info = match r {
            Ok((_, i)) => i.expect("data handed back"),
            // No such device, or not ours: the legacy command would say the same.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODEV | libc::EACCES | libc::EPERM)
                ) =>
            {
                return Err(e);
            }
            Err(_) => {
                let c = Self::header(dev_id);
                let (_, i) = self.cmd_data(UBLK_U_CMD_GET_DEV_INFO, c, Some(info), &|| false)?;
                i.expect("data handed back")
            }
        };
        self.learn(&info);
        Ok(info)
    }

    /// The CPUs the kernel maps to hardware queue `qid`.
    pub fn get_queue_affinity(&mut self, dev_id: u32, qid: u16) -> io::Result<Vec<usize>> {
        let mask = [0u8; 128]; // cpu_set_t: 1024 CPUs
        let mut c = Self::header(dev_id);
        c.data[0] = qid as u64;
        let (_, mask) = self.cmd_data(UBLK_U_CMD_GET_QUEUE_AFFINITY, c, Some(mask), &|| false)?;
        let mask = mask.expect("data handed back");
        Ok((0..mask.len() * 8)
            .filter(|i| mask[i / 8] & (1 << (i % 8)) != 0)
            .collect())
    }

    /// Begin handing a device whose daemon died to a new daemon.
    pub fn start_user_recovery(&mut self, dev_id: u32) -> io::Result<()> {
        self.cmd(UBLK_U_CMD_START_USER_RECOVERY, Self::header(dev_id))
            .map(drop)
    }

    /// Finish recovery once every tag of every queue is fetched again (or give up once
    /// `abort` says a queue will never fetch, as for `start_dev`).
    pub fn end_user_recovery(
        &mut self,
        dev_id: u32,
        daemon_pid: i32,
        abort: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let mut c = Self::header(dev_id);
        c.data[0] = daemon_pid as u64;
        self.cmd_abortable(UBLK_U_CMD_END_USER_RECOVERY, c, abort)
            .map(drop)
    }

    /// Quiesce the device (Linux 6.16+, UBLK_F_QUIESCE): in-flight requests finish, new ones
    /// wait for a recovering daemon. `timeout_ms` bounds the wait.
    pub fn quiesce_dev(&mut self, dev_id: u32, timeout_ms: u64) -> io::Result<()> {
        let mut c = Self::header(dev_id);
        c.data[0] = timeout_ms;
        self.cmd(UBLK_U_CMD_QUIESCE_DEV, c).map(drop)
    }

    /// Register `len` bytes of a shared mapping of ours at `addr` (UBLK_F_SHMEM_ZC, Linux 7.1+):
    /// the driver pins the pages and, from then on, hands over a request whose pages all lie
    /// in it by reference (UBLK_IO_F_SHMEM_ZC). Returns the buffer's index.
    pub fn reg_buf(&mut self, dev_id: u32, addr: u64, len: u64) -> io::Result<u16> {
        let reg = ublk_shmem_buf_reg {
            addr,
            len,
            flags: 0,
            reserved: 0,
        };
        let c = Self::header(dev_id);
        let (r, _) = self.cmd_data(UBLK_U_CMD_REG_BUF, c, Some(reg), &|| false)?;
        Ok(r as u16)
    }

    /// Change the disk's size (Linux 6.16+, UBLK_F_UPDATE_SIZE): `sectors` of 512 bytes. The
    /// driver sets the new capacity and tells the block layer, which announces it (a uevent).
    pub fn update_size(&mut self, dev_id: u32, sectors: u64) -> io::Result<()> {
        let mut c = Self::header(dev_id);
        c.data[0] = sectors;
        self.cmd(UBLK_U_CMD_UPDATE_SIZE, c).map(drop)
    }
}

/// `/dev/ublkcN` as the driver wants it in a command's data buffer: NUL-terminated.
fn char_dev_path(dev_id: u32) -> Vec<u8> {
    format!("/dev/ublkc{dev_id}\0").into_bytes()
}

/// Plain data a control command may carry: every bit pattern is a valid value, so what the
/// driver writes can be read back as one.
///
/// # Safety
/// Implement only for integers, arrays of them and `#[repr(C)]` structs made of those.
unsafe trait Pod: Copy {}
// SAFETY: integers, byte arrays and the uapi's repr(C) structs of integers.
unsafe impl Pod for u64 {}
unsafe impl Pod for [u8; 128] {}
unsafe impl Pod for ublksrv_ctrl_dev_info {}
unsafe impl Pod for ublk_params {}
unsafe impl Pod for ublk_shmem_buf_reg {}

/// No data: a command that names at most the device path.
#[derive(Clone, Copy)]
struct NoData;
// SAFETY: zero-sized, never read or written (cmd_data sends no data for `None`).
unsafe impl Pod for NoData {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_path_is_nul_terminated() {
        assert_eq!(char_dev_path(12), b"/dev/ublkc12\0");
    }
}
