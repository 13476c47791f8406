//! A device's lifecycle on the driver: negotiate features, ADD_DEV, SET_PARAMS, start one thread
//! per queue, START_DEV; and the way down: STOP_DEV, join the queues, close, DEL_DEV, the last two
//! waits bounded. Every failure on the way up undoes what was done, so a failed `add` leaves
//! nothing behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use targets::{Geometry, Target};

use crate::bufmode::BufMode;
use crate::ctrl::Control;
use crate::features;
pub use crate::options::{DeviceError, DeviceOptions};
use crate::queue::{QueueConfig, QueueStats, QueueTuning, run_queue};
use crate::uapi::*;

/// How long queue threads get to end once told to (after STOP_DEV, which returns only when no
/// request is in flight any more, they just have to see their fetches aborted).
const QUEUE_END_LIMIT: Duration = Duration::from_secs(10);
/// How long DEL_DEV may wait for the last user of the device's disk (a file system still
/// mounted on a stopped disk holds it until unmounted: the device is deleted either way).
pub const DEL_DEV_LIMIT: Duration = Duration::from_secs(3);

fn ioerr(what: impl Into<String>) -> impl FnOnce(io::Error) -> DeviceError {
    let what = what.into();
    move |err| DeviceError::Io { what, err }
}

/// The driver's features, or `None` on kernels older than GET_FEATURES (6.5).
pub fn kernel_features(ctrl: &mut Control) -> Option<u64> {
    ctrl.get_features().ok()
}

/// Check what can be checked of `opts` without the driver (an unprivileged device's buffer
/// mode and recovery), so a CLI can refuse before it starts anything.
pub fn check_options(opts: &DeviceOptions) -> Result<(), DeviceError> {
    crate::policy::device_flags(opts, targets::Caps::default(), None).map(drop)
}

/// Fill `ublk_params` from a target's geometry.
pub fn params_for(geo: &Geometry, max_io: u32) -> ublk_params {
    let mut p = ublk_params {
        types: UBLK_PARAM_TYPE_BASIC,
        ..Default::default()
    };
    let c = geo.caps;
    let mut attrs = 0;
    if c.read_only {
        attrs |= UBLK_ATTR_READ_ONLY;
    }
    if c.rotational {
        attrs |= UBLK_ATTR_ROTATIONAL;
    }
    if c.flush {
        attrs |= UBLK_ATTR_VOLATILE_CACHE;
    }
    if c.fua {
        attrs |= UBLK_ATTR_FUA;
    }
    p.basic = ublk_param_basic {
        attrs,
        logical_bs_shift: geo.logical_block.trailing_zeros() as u8,
        physical_bs_shift: geo.physical_block.trailing_zeros() as u8,
        io_opt_shift: geo.physical_block.trailing_zeros() as u8,
        io_min_shift: geo.logical_block.trailing_zeros() as u8,
        max_sectors: max_io >> 9,
        chunk_sectors: 0,
        dev_sectors: geo.size >> 9,
        virt_boundary_mask: 0,
    };
    if c.discard || c.write_zeroes {
        p.types |= UBLK_PARAM_TYPE_DISCARD;
        let max = (u32::MAX >> 9) & !((geo.logical_block >> 9) - 1);
        p.discard = ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: geo.physical_block.max(4096),
            max_discard_sectors: if c.discard { max } else { 0 },
            max_write_zeroes_sectors: if c.write_zeroes { max } else { 0 },
            max_discard_segments: 1,
            reserved0: 0,
        };
    }
    p
}

/// A device being served: its id, what the kernel granted, and the queue threads.
pub struct Device {
    ctrl: Control,
    pub info: ublksrv_ctrl_dev_info,
    pub mode: BufMode,
    cdev: Option<Arc<File>>,
    queues: Vec<JoinHandle<io::Result<QueueStats>>>,
    /// Each queue's counters, for readers while it serves.
    counters: Vec<Arc<stats::QueueCounters>>,
    stops: Vec<rt::sync::Signal>,
    /// The first queue that gave up while serving, and why.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    started: bool,
    deleted: bool,
    /// The SHMEM_ZC buffer (driver's index, our mapping), shared with the queues.
    shmem: Option<(u16, Arc<crate::shmem::ShmemBuf>)>,
}

impl Device {
    /// Create, configure and start a device served by `target`. Returns once `/dev/ublkbN`
    /// exists. On any error everything created so far is torn down.
    pub fn create<T: Target>(target: Arc<T>, opts: &DeviceOptions) -> Result<Device, DeviceError> {
        if opts.depth == 0 || opts.depth as u32 > UBLK_MAX_QUEUE_DEPTH {
            return Err(DeviceError::Invalid(format!(
                "queue depth {} is outside 1..={UBLK_MAX_QUEUE_DEPTH}",
                opts.depth
            )));
        }
        if opts.queues == 0 || opts.queues as u32 > UBLK_MAX_NR_QUEUES {
            return Err(DeviceError::Invalid(format!(
                "queue count {} is outside 1..={UBLK_MAX_NR_QUEUES}",
                opts.queues
            )));
        }
        if opts.max_io < 4096
            || opts.max_io > (1 << UBLK_IO_BUF_BITS)
            || !opts.max_io.is_power_of_two()
        {
            return Err(DeviceError::Invalid(format!(
                "max I/O size {} must be a power of two in 4K..=32M",
                opts.max_io
            )));
        }
        let t0 = Instant::now();
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        let geo = target.geometry();
        let mut ctrl = Control::open()?;
        let (mode, flags) =
            crate::policy::device_flags(opts, geo.caps, kernel_features(&mut ctrl))?;
        let want_id = opts.dev_id.unwrap_or(u32::MAX);
        let mut info = ublksrv_ctrl_dev_info {
            nr_hw_queues: opts.queues,
            queue_depth: opts.depth,
            max_io_buf_bytes: opts.max_io,
            dev_id: want_id,
            flags,
            ..Default::default()
        };
        ctrl.add_dev(&mut info)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST) => DeviceError::IdInUse(want_id),
                _ => DeviceError::Io {
                    what: "ADD_DEV".into(),
                    err: e,
                },
            })?;
        steps.push(("ADD_DEV", t0.elapsed()));
        let mut dev = Device::new(ctrl, info, mode);
        // From here on, `dev`'s Drop undoes everything if we return early.
        if info.flags & flags != flags {
            return Err(DeviceError::Unsupported(
                features::names(flags & !info.flags).join(", "),
                "the driver did not grant it at ADD_DEV".into(),
            ));
        }
        let unprivileged = info.flags & UBLK_F_UNPRIVILEGED_DEV != 0;
        if unprivileged {
            // The driver creates the char device root's; udev hands it to us (contrib/udev),
            // and every later command needs it ours.
            wait_for_owner(&format!("/dev/ublkc{}", info.dev_id), info.owner_uid)?;
            steps.push(("char device handed over", t0.elapsed()));
        }
        if let Some(path) = &opts.shmem {
            let buf = crate::shmem::ShmemBuf::open(path).map_err(DeviceError::Invalid)?;
            let index = dev
                .ctrl
                .reg_buf(dev.info.dev_id, buf.addr(), buf.len() as u64)
                .map_err(ioerr(format!("registering --shmem {}", path.display())))?;
            tracing::info!(
                "device {}: {} ({} bytes) registered as shared-memory buffer {index}",
                dev.info.dev_id,
                path.display(),
                buf.len()
            );
            dev.shmem = Some((index, Arc::new(buf)));
            steps.push(("REG_BUF", t0.elapsed()));
        }
        let params = params_for(&geo, dev.info.max_io_buf_bytes);
        dev.ctrl
            .set_params(dev.info.dev_id, &params)
            .map_err(ioerr("SET_PARAMS"))?;
        steps.push(("SET_PARAMS", t0.elapsed()));
        dev.spawn_queues(target, opts.tuning)?;
        steps.push(("queues", t0.elapsed()));
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let queues = &dev.queues;
        let r = dev
            .ctrl
            .start_dev(dev.info.dev_id, pid, &|| ended_queue(queues).is_some());
        if let Err(e) = r {
            return Err(dev.start_error("START_DEV", e));
        }
        dev.started = true;
        steps.push(("START_DEV", t0.elapsed()));
        wait_for_node(
            &format!("/dev/ublkb{}", dev.info.dev_id),
            Duration::from_secs(5),
        )?;
        if unprivileged {
            wait_for_owner(
                &format!("/dev/ublkb{}", dev.info.dev_id),
                dev.info.owner_uid,
            )?;
        }
        steps.push(("node", t0.elapsed()));
        if let Ok(i) = dev.ctrl.get_dev_info(dev.info.dev_id) {
            dev.info = i;
        }
        // Where creation time goes (cumulative milliseconds), for `add` latency questions.
        let at: Vec<String> = steps
            .iter()
            .map(|(n, d)| format!("{n} {:.1}", d.as_secs_f64() * 1e3))
            .collect();
        tracing::debug!("device {} created: {} ms", dev.info.dev_id, at.join(", "));
        Ok(dev)
    }

    /// A device known to the driver that no queue serves yet.
    fn new(ctrl: Control, info: ublksrv_ctrl_dev_info, mode: BufMode) -> Device {
        Device {
            ctrl,
            info,
            mode,
            cdev: None,
            queues: Vec::new(),
            counters: Vec::new(),
            stops: Vec::new(),
            failure: Arc::default(),
            started: false,
            deleted: false,
            shmem: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.info.dev_id
    }

    /// Each queue's counters (index = queue id), readable from any thread while it serves.
    pub fn counters(&self) -> &[Arc<stats::QueueCounters>] {
        &self.counters
    }

    /// Open the char device and start one thread per queue, each fetching every tag.
    fn spawn_queues<T: Target>(
        &mut self,
        target: Arc<T>,
        tuning: QueueTuning,
    ) -> Result<(), DeviceError> {
        let cdev = Arc::new(open_char_dev(self.info.dev_id)?);
        self.cdev = Some(cdev.clone());
        let caps = target.geometry().caps;
        let ignores_data = caps.ignores_data;
        let batch = self.info.flags & UBLK_F_BATCH_IO != 0;
        let shallow_inline = self.mode == BufMode::ZeroCopy
            && self.info.flags & UBLK_F_USER_COPY != 0
            && caps.inline_io;
        for q in 0..self.info.nr_hw_queues {
            let cpus = if tuning.pin {
                self.ctrl
                    .get_queue_affinity(self.info.dev_id, q)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let cfg = QueueConfig {
                q_id: q,
                depth: self.info.queue_depth,
                max_io: self.info.max_io_buf_bytes,
                mode: self.mode,
                batch,
                ignores_data,
                needs_cpu_access: caps.needs_cpu_access,
                shallow_inline,
                cpus,
                busy_poll: tuning.busy_poll,
                counters: Arc::new(stats::QueueCounters::new()),
                shmem: self.shmem.clone(),
            };
            self.counters.push(cfg.counters.clone());
            let stop = rt::sync::Signal::new();
            self.stops.push(stop.clone());
            let t = target.clone();
            let c = cdev.clone();
            let failure = self.failure.clone();
            let h = std::thread::Builder::new()
                .name(format!("ublk{}q{}", self.info.dev_id, q))
                .spawn(move || {
                    let r = run_queue(&*t, c, cfg, stop);
                    if let Err(e) = &r {
                        tracing::error!("queue {q}: {e}");
                        let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                        f.get_or_insert_with(|| format!("queue {q}: {e}"));
                    }
                    // Fault injection for the test suite: queue 0's thread never ends, as one
                    // stuck in the target or the kernel would not; teardown must not wait for it.
                    if q == 0 && std::env::var_os("UBLKD_FAULT_QUEUE_STUCK").is_some() {
                        loop {
                            std::thread::park();
                        }
                    }
                    r
                })
                .map_err(ioerr("spawning queue thread"))?;
            self.queues.push(h);
        }
        Ok(())
    }

    /// Why START_DEV/END_USER_RECOVERY failed: the error of a queue thread that ended before
    /// fetching (which is what made the command give up), else the command's own.
    fn start_error(&mut self, what: &str, err: io::Error) -> DeviceError {
        if let Some(i) = ended_queue(&self.queues) {
            let h = self.queues.remove(i);
            let qerr = match h.join() {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => io::Error::other("ended before serving"),
                Err(_) => io::Error::other("panicked"),
            };
            return DeviceError::Io {
                what: format!("queue {i} did not start"),
                err: qerr,
            };
        }
        DeviceError::Io {
            what: what.into(),
            err,
        }
    }

    /// Take over device `id` whose daemon died (or quiesced it for an upgrade):
    /// START_USER_RECOVERY, fetch every tag again from `target`, END_USER_RECOVERY. Queues, depth
    /// and buffer mode are the device's own. On failure the device is left for another attempt,
    /// never deleted.
    pub fn recover<T: Target>(
        target: Arc<T>,
        id: u32,
        tuning: QueueTuning,
    ) -> Result<Device, DeviceError> {
        let mut ctrl = Control::open()?;
        let info = ctrl.get_dev_info(id).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) => DeviceError::Invalid(format!("device {id} does not exist")),
            Some(libc::EACCES | libc::EPERM) => {
                DeviceError::Invalid(format!("device {id} is not yours (permission denied)"))
            }
            _ => DeviceError::Io {
                what: format!("device {id}"),
                err: e,
            },
        })?;
        if info.flags & UBLK_F_UNPRIVILEGED_DEV != 0 {
            return Err(DeviceError::Invalid(format!(
                "device {id} is unprivileged, and the driver never lets such a device be recovered (delete it: ublkd del -n {id})"
            )));
        }
        if info.flags & UBLK_F_USER_RECOVERY == 0 {
            return Err(DeviceError::Invalid(format!(
                "device {id} was created with --recovery off and cannot be recovered (delete it: ublkd del -n {id})"
            )));
        }
        let mode = BufMode::from_flags(info.flags);
        if mode == BufMode::ZeroCopy && target.geometry().caps.needs_cpu_access {
            return Err(DeviceError::Invalid(format!(
                "device {id} uses zero-copy buffers, which this target cannot serve"
            )));
        }
        ctrl.start_user_recovery(id).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => DeviceError::Invalid(format!(
                "device {id} is not waiting for recovery (its daemon is alive, or the driver has not noticed its exit yet)"
            )),
            _ => DeviceError::Io { what: "START_USER_RECOVERY".into(), err: e },
        })?;
        let mut dev = Device::new(ctrl, info, mode);
        // Until END_USER_RECOVERY succeeds, failing must leave the device in place.
        let r = dev.spawn_queues(target, tuning).and_then(|()| {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            let queues = &dev.queues;
            let r = dev
                .ctrl
                .end_user_recovery(id, pid, &|| ended_queue(queues).is_some());
            r.map_err(|e| dev.start_error("END_USER_RECOVERY", e))
        });
        if let Err(e) = r {
            dev.abandon();
            return Err(e);
        }
        dev.started = true;
        if let Ok(i) = dev.ctrl.get_dev_info(id) {
            dev.info = i;
        }
        Ok(dev)
    }

    /// Give the disk a new size in bytes (a multiple of 512; UPDATE_SIZE, Linux 6.16+). The
    /// target must already serve the new size: the block layer may send requests up to it at
    /// once. Refused (EOPNOTSUPP) on a device created without UBLK_F_UPDATE_SIZE.
    pub fn update_size(&mut self, bytes: u64) -> io::Result<()> {
        if self.info.flags & UBLK_F_UPDATE_SIZE == 0 {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        self.ctrl.update_size(self.info.dev_id, bytes / 512)
    }

    /// The driver's current state of the device (UBLK_S_DEV_*), if it still exists.
    pub fn driver_state(&mut self) -> Option<u16> {
        self.ctrl
            .get_dev_info(self.info.dev_id)
            .ok()
            .map(|i| i.state)
    }

    /// Stop serving without stopping or deleting the device: the queues end, the char device
    /// closes, and the driver keeps the disk for a recovering daemon (after a quiesce for an
    /// upgrade, or a failed recovery).
    pub fn abandon(mut self) {
        for s in &self.stops {
            s.raise();
        }
        let (_, stuck) = self.end_queues();
        if !stuck.is_empty() {
            tracing::error!(
                "device {}: queue {stuck:?} still busy {}s after being told to stop (stuck in the target or the kernel); leaving it: the char device closes when this process exits",
                self.info.dev_id,
                QUEUE_END_LIMIT.as_secs()
            );
        }
        self.cdev = None;
        self.deleted = true;
    }

    /// Why a queue gave up while the device was live, if one did: its requests can no longer be
    /// served, so the daemon must hand the device on (recovery) or stop it.
    pub fn queue_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once any queue thread has ended.
    pub fn queue_ended(&self) -> bool {
        self.queues.iter().any(|h| h.is_finished())
    }

    /// True once every queue thread has ended (e.g. the device was stopped from outside).
    pub fn queues_finished(&self) -> bool {
        self.queues.iter().all(|h| h.is_finished())
    }

    /// Stop serving: STOP_DEV (the disk goes away, queues see ABORT), join the queues, close
    /// the char device, DEL_DEV. Returns the queues' counters. Never waits forever: queues still
    /// running 10 s after STOP_DEV are left (DeviceError::Stuck, and no DEL_DEV, which would wait
    /// for them), and DEL_DEV gives up waiting for the disk's last user after 3 s.
    pub fn shutdown(mut self) -> Result<Vec<QueueStats>, DeviceError> {
        let stats = self.teardown();
        self.deleted = true;
        stats
    }

    fn teardown(&mut self) -> Result<Vec<QueueStats>, DeviceError> {
        let id = self.info.dev_id;
        if self.started
            && let Err(e) = self.ctrl.stop_dev(id)
            && e.raw_os_error() != Some(libc::ENODEV)
        {
            tracing::warn!("STOP_DEV {id}: {e}");
        }
        // Queues that never got going (early error) are told to stop; started ones end on ABORT.
        if !self.started {
            for s in &self.stops {
                s.raise();
            }
        }
        let (stats, stuck) = self.end_queues();
        // Our reference; a stuck queue thread keeps its own, so the char device stays open.
        self.cdev = None;
        if !stuck.is_empty() {
            // DEL_DEV would wait for the char device to close, that is for those threads.
            return Err(DeviceError::Stuck {
                id,
                queues: format!("{stuck:?}"),
                secs: QUEUE_END_LIMIT.as_secs(),
            });
        }
        match self.ctrl.del_dev(id, DEL_DEV_LIMIT) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "device {id} deleted, but its disk is still held (a file system mounted on it, or an open file): the id stays taken until that lets go"
            ),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(DeviceError::Io {
                    what: format!("DEL_DEV {id}"),
                    err: e,
                });
            }
        }
        Ok(stats)
    }

    /// Wait up to QUEUE_END_LIMIT for every queue thread to end (raising their stop flags for a
    /// last 100 ms if the time runs out) and join those that ended. Returns their counters and
    /// the queues still running: those threads are left detached, since joining a thread stuck
    /// in the kernel or in the target could wait forever.
    fn end_queues(&mut self) -> (Vec<QueueStats>, Vec<usize>) {
        let deadline = Instant::now() + QUEUE_END_LIMIT;
        while !self.queues_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.queues_finished() {
            for s in &self.stops {
                s.raise();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut stats = Vec::new();
        let mut stuck = Vec::new();
        for (q, h) in self.queues.drain(..).enumerate() {
            if !h.is_finished() {
                stuck.push(q); // dropping the handle detaches the thread
                continue;
            }
            match h.join() {
                Ok(Ok(s)) => stats.push(s),
                Ok(Err(e)) => tracing::warn!("queue {q} ended with error: {e}"),
                Err(_) => tracing::error!("queue {q} thread panicked"),
            }
        }
        (stats, stuck)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.deleted {
            self.deleted = true;
            if let Err(e) = self.teardown() {
                tracing::error!("cleaning up device {}: {e}", self.info.dev_id);
            }
        }
    }
}

/// The first queue thread that has ended. Before START_DEV/END_USER_RECOVERY completes, none
/// may end except by failing.
fn ended_queue(queues: &[JoinHandle<io::Result<QueueStats>>]) -> Option<usize> {
    queues.iter().position(|h| h.is_finished())
}

/// Open `/dev/ublkcN`, waiting briefly for devtmpfs/udev to create it.
fn open_char_dev(id: u32) -> Result<File, DeviceError> {
    let path = format!("/dev/ublkc{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(DeviceError::Io {
                    what: format!("open {path}"),
                    err: e,
                });
            }
        }
    }
}

/// How long udev gets to hand an unprivileged device's nodes to their owner.
const OWNER_LIMIT: Duration = Duration::from_secs(30);

/// Wait for the node `path` to belong to `uid` (udev's helper chowns an unprivileged device's
/// nodes to their owner once the driver has created them root's).
fn wait_for_owner(path: &str, uid: u32) -> Result<(), DeviceError> {
    use std::os::unix::fs::MetadataExt;
    let deadline = Instant::now() + OWNER_LIMIT;
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.uid() == uid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DeviceError::System(format!(
                "{path} was not handed to uid {uid} within {} s: install contrib/udev/70-ublkd-unprivileged.rules (README, \"Unprivileged devices\") and make sure udev runs",
                OWNER_LIMIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_node(path: &str, limit: Duration) -> Result<(), DeviceError> {
    let deadline = Instant::now() + limit;
    while !std::path::Path::new(path).exists() {
        if Instant::now() >= deadline {
            return Err(DeviceError::Io {
                what: path.into(),
                err: io::ErrorKind::NotFound.into(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use targets::Caps;

    #[test]
    fn params_follow_geometry() {
        let geo = Geometry {
            size: 1 << 30,
            logical_block: 4096,
            physical_block: 4096,
            caps: Caps {
                flush: true,
                fua: true,
                discard: true,
                write_zeroes: false,
                ..Caps::default()
            },
        };
        let p = params_for(&geo, 512 << 10);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.dev_sectors, (1 << 30) >> 9);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_eq!(p.basic.attrs, UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA);
        assert_ne!(p.types & UBLK_PARAM_TYPE_DISCARD, 0);
        assert!(p.discard.max_discard_sectors > 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, 0);
        assert_eq!(
            p.discard.max_discard_sectors % 8,
            0,
            "multiple of the logical block"
        );
    }
}
