//! The control plane: one frontend connection's vhost-user messages, on the control thread.
//!
//! rust-vmm's `vhost` crate reads and checks the messages (`BackendReqHandler`) and calls
//! this handler; its `Mutex` wrapper is taken by that one thread only. The data path never
//! sees it: a queue thread gets everything it needs when its ring starts (SET_VRING_KICK) and
//! afterwards only two atomically swapped pointers change under it (the memory table and the
//! call eventfd).
//!
//! Ring life: SET_VRING_NUM/ADDR/BASE/CALL configure it, SET_VRING_KICK starts its thread,
//! GET_VRING_BASE stops it (after its requests in flight finished) and answers where it
//! stopped. A memory table change replies only once no queue thread translates with the old
//! table (memory.rs). Inflight tracking: GET_INFLIGHT_FD makes the shared file, SET_INFLIGHT_FD
//! hands it (again, after a restart) to us, and each ring start recovers from it (inflight.rs).

use std::fs::File;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use targets::Target;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use virtio_queue::{Queue, QueueT};

use crate::config::{self, Device};
use crate::data::Stats;
use crate::inflight::InflightRegion;
use crate::memory::{MAX_REGIONS, Memory, RegionInfo, SharedMemory};
use crate::queue::{self, QueueSetup, RunningQueue};

#[derive(Default)]
struct Vring {
    size: u16,
    /// Frontend virtual addresses of the descriptor table, available ring, used ring.
    addrs: Option<(u64, u64, u64)>,
    base: u16,
    call: Arc<ArcSwapOption<File>>,
    running: Option<RunningQueue>,
}

/// One connection's device state.
pub struct Backend<T: Target> {
    target: Arc<T>,
    dev: Arc<Device>,
    mem: Arc<SharedMemory>,
    stats: Arc<Stats>,
    features: u64,
    protocol: u64,
    vrings: Vec<Vring>,
    inflight: Option<Arc<InflightRegion>>,
}

fn invalid(why: &'static str) -> Error {
    tracing::warn!("frontend: {why}");
    Error::InvalidOperation(why)
}

impl<T: Target> Backend<T> {
    pub fn new(target: Arc<T>, dev: Arc<Device>, stats: Arc<Stats>) -> Backend<T> {
        let n = dev.opts.num_queues as usize;
        Backend {
            target,
            dev,
            mem: Arc::new(SharedMemory::default()),
            stats,
            features: 0,
            protocol: 0,
            vrings: (0..n).map(|_| Vring::default()).collect(),
            inflight: None,
        }
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or_else(|| invalid("queue index out of range"))
    }

    /// Stop a ring's thread; its next available index becomes the ring's base.
    fn stop_ring(&mut self, index: usize) -> Result<u16> {
        let v = &mut self.vrings[index];
        if let Some(r) = v.running.take() {
            match r.stop() {
                Ok(next) => v.base = next,
                Err(e) => tracing::warn!("queue {index} ended with an error: {e}"),
            }
            tracing::debug!("queue {index} stopped at {}", v.base);
        }
        Ok(v.base)
    }

    /// Stop every ring (disconnect, reset, shutdown): requests in flight complete first.
    pub fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            let _ = self.stop_ring(i);
        }
    }

    fn start_ring(&mut self, index: usize, kick: File) -> Result<()> {
        let mem = self.mem.current();
        let v = &self.vrings[index];
        let (d, a, u) = v
            .addrs
            .ok_or_else(|| invalid("kick before the ring's addresses"))?;
        if v.size == 0 {
            return Err(invalid("kick before the ring's size"));
        }
        let gpa = |va| {
            mem.va_to_gpa(va)
                .ok_or_else(|| invalid("ring address outside guest memory"))
        };
        let mut q = Queue::new(self.dev.opts.queue_size).map_err(|_| invalid("bad queue size"))?;
        q.try_set_size(v.size)
            .map_err(|_| invalid("ring size not a power of two"))?;
        q.try_set_desc_table_address(gpa(d)?)
            .map_err(|_| invalid("misaligned descriptor table"))?;
        q.try_set_avail_ring_address(gpa(a)?)
            .map_err(|_| invalid("misaligned available ring"))?;
        q.try_set_used_ring_address(gpa(u)?)
            .map_err(|_| invalid("misaligned used ring"))?;
        q.set_event_idx(self.features & 1 << config::RING_EVENT_IDX != 0);
        q.set_ready(true);
        if !q.is_valid(&mem.mmap) {
            return Err(invalid("ring outside guest memory"));
        }
        let inflight = match &self.inflight {
            Some(r) => {
                let t = r.queue(index as u16, v.size);
                if t.is_none() {
                    tracing::warn!(
                        "queue {index}: the inflight region does not cover it; no restart tracking"
                    );
                }
                t
            }
            None => None,
        };
        let setup = QueueSetup {
            index: index as u16,
            queue: q,
            base: v.base,
            kick,
            call: v.call.clone(),
            inflight,
            target: self.target.clone(),
            dev: self.dev.clone(),
            mem: self.mem.clone(),
            stats: self.stats.clone(),
        };
        let r = queue::start(setup).map_err(Error::ReqHandlerError)?;
        self.vrings[index].running = Some(r);
        tracing::debug!("queue {index} started");
        Ok(())
    }

    fn publish(
        &mut self,
        m: std::result::Result<Memory, crate::memory::MemoryError>,
    ) -> Result<()> {
        match m {
            Ok(m) => {
                tracing::debug!("guest memory: {m:?}");
                self.mem.publish(m);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("frontend: {e}");
                Err(Error::InvalidParam)
            }
        }
    }
}

impl<T: Target> Drop for Backend<T> {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn region(r: &VhostUserMemoryRegion) -> RegionInfo {
    RegionInfo {
        guest_phys_addr: r.guest_phys_addr,
        size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

impl<T: Target> VhostUserBackendReqHandlerMut for Backend<T> {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> Result<()> {
        self.stop_all();
        Ok(())
    }
    fn reset_device(&mut self) -> Result<()> {
        self.stop_all();
        Ok(())
    }
    fn get_features(&mut self) -> Result<u64> {
        Ok(self.dev.features())
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.dev.features() != 0 {
            return Err(invalid("features we did not offer"));
        }
        self.features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> Result<Option<Vec<u64>>> {
        if ctx.len() != files.len() || ctx.len() > MAX_REGIONS {
            return Err(invalid("memory table and fds do not match"));
        }
        let m = Memory::new(ctx.iter().map(region).zip(files).collect());
        self.publish(m).map(|_| None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let max = self.dev.opts.queue_size as u32;
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(invalid("ring size not a power of two up to --queue-size"));
        }
        self.vring(index)?.size = num as u16;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        self.vring(index)?.addrs = Some((descriptor, available, used));
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.vring(index)?.base = base as u16;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.vring(index)?;
        let next = self.stop_ring(index as usize)?;
        Ok(VhostUserVringState::new(index, next as u32))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(index as u32)?;
        let i = index as usize;
        self.stop_ring(i)?;
        let Some(kick) = fd else {
            return Err(invalid(
                "polling a ring without a kick eventfd is not supported",
            ));
        };
        self.start_ring(i, kick)
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(index as u32)?.call.store(fd.map(Arc::new));
        Ok(())
    }
    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        self.vring(index as u32)?;
        Ok(())
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.protocol = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.vrings.len() as u64)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        // Informational, as in libvhost-user: a ring serves from its kick to GET_VRING_BASE.
        self.vring(index)?;
        tracing::debug!("queue {index} enable={enable}");
        Ok(())
    }
    fn get_config(&mut self, offset: u32, size: u32, _f: VhostUserConfigFlags) -> Result<Vec<u8>> {
        self.dev
            .config(offset, size)
            .ok_or_else(|| invalid("config read outside virtio_blk_config"))
    }
    fn set_config(&mut self, offset: u32, buf: &[u8], _f: VhostUserConfigFlags) -> Result<()> {
        if self.dev.set_config(offset, buf) {
            Ok(())
        } else {
            Err(invalid("config write to a read-only field"))
        }
    }
    fn set_gpu_socket(&mut self, _g: GpuBackend) -> Result<()> {
        Err(invalid("not a GPU"))
    }
    fn get_shared_object(&mut self, _u: VhostUserSharedMsg) -> Result<File> {
        Err(invalid("no shared objects"))
    }
    fn get_inflight_fd(&mut self, m: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let (r, file) = InflightRegion::create(m.num_queues, m.queue_size).map_err(|e| {
            tracing::warn!("frontend: GET_INFLIGHT_FD: {e}");
            Error::InvalidParam
        })?;
        let size = crate::inflight::queue_region_size(m.queue_size) as u64 * m.num_queues as u64;
        self.inflight = Some(Arc::new(r));
        tracing::debug!(
            "inflight tracking file: {} queues of {}",
            m.num_queues,
            m.queue_size
        );
        Ok((
            VhostUserInflight::new(size, 0, m.num_queues, m.queue_size),
            file,
        ))
    }
    fn set_inflight_fd(&mut self, m: &VhostUserInflight, file: File) -> Result<()> {
        let r = InflightRegion::map(file, m.mmap_offset, m.mmap_size, m.num_queues, m.queue_size)
            .map_err(|e| {
            tracing::warn!("frontend: SET_INFLIGHT_FD: {e}");
            Error::InvalidParam
        })?;
        tracing::debug!(
            "inflight tracking file from the frontend: {} queues of {}",
            m.num_queues,
            m.queue_size
        );
        self.inflight = Some(Arc::new(r));
        Ok(())
    }
    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_REGIONS as u64)
    }
    fn add_mem_region(
        &mut self,
        r: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy: Option<bool>,
    ) -> Result<Option<u64>> {
        let m = self.mem.current().with_region(region(r), fd);
        self.publish(m).map(|_| None)
    }
    fn remove_mem_region(&mut self, r: &VhostUserSingleMemoryRegion) -> Result<()> {
        let m = self.mem.current().without_region(&region(r));
        self.publish(m)
    }
    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(invalid("no device state transfer"))
    }
    fn check_device_state(&mut self) -> Result<()> {
        Err(invalid("no device state transfer"))
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(invalid("no dirty logging (migration)"))
    }
}
