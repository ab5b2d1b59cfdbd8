// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `NetBackend`: our vhost-user request handler (the control plane's state).
//!
//! It keeps the negotiated features, the memory table (through `SharedPageMap`), the
//! ring configurations and one worker per queue pair. Whenever a request changes the
//! rings of a pair, that pair's worker is stopped (its ring indices and uplink queue
//! come back) and started again with the new configuration if any ring is active.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;
use vhost::vhost_user::{Backend, Error as VhostError, GpuBackend, Result as VhostResult};
use vhost::VhostUserMemoryRegionBase;
use vmm_sys_util::eventfd::EventFd;

use super::vring::VringConfig;
use crate::config::NetConfig;
use crate::datapath::ring::packed::resume::{check_base, Resume};
use crate::datapath::ring::packed::{PackedIndices, MAX_PACKED_SIZE};
use crate::datapath::{PairWorker, RingSetup, WorkerSpec};
use crate::metrics::DeviceMetrics;
use crate::netmem::{DirtyLog, RegionSpec, SharedPageMap, MAX_REGIONS};
use crate::ratelimit::RateLimits;
use crate::uplink::Uplink;
use crate::virtio::features::{
    VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::virtio::{Features, NetConfigSpace};

/// The vhost-user protocol features we offer.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::STATUS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

fn refuse(what: &'static str) -> VhostError {
    VhostError::InvalidOperation(what)
}

/// The control plane of one connection.
pub struct NetBackend {
    config: Arc<NetConfig>,
    offered: u64,
    uplink: Arc<dyn Uplink>,
    memory: Arc<SharedPageMap>,
    metrics: Arc<DeviceMetrics>,
    rate_limits: Arc<RateLimits>,
    acked_features: Option<u64>,
    acked_protocol: u64,
    status: u8,
    vrings: Vec<VringConfig>,
    workers: Vec<Option<PairWorker>>,
    /// The dirty log (SET_LOG_BASE); the rings write into it while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// SET_LOG_FD's file.
    log_fd: Option<File>,
    /// Whether the guest was announced since the device last started (`announce_resume`).
    announced: bool,
    /// Whether the uplink's carrier is down because the guest was handed over
    /// (`hand_over_link`).
    link_handed_over: bool,
}

/// Whether `acked` virtio features (none before SET_FEATURES) include LOG_ALL: the
/// frontend is migrating the guest and logs the backend's writes.
fn logs_all(acked: Option<u64>) -> bool {
    acked.is_some_and(|f| Features::from_bits(f).has(VHOST_F_LOG_ALL))
}

impl NetBackend {
    /// A backend for one connection, offering `offered` virtio features; its workers
    /// follow `rate_limits`.
    pub fn new(
        config: Arc<NetConfig>,
        offered: u64,
        uplink: Arc<dyn Uplink>,
        metrics: Arc<DeviceMetrics>,
        rate_limits: Arc<RateLimits>,
    ) -> Self {
        let pairs = usize::from(config.queue_pairs);
        NetBackend {
            offered,
            uplink,
            memory: Arc::new(SharedPageMap::with_limit(config.max_guest_memory)),
            metrics,
            rate_limits,
            acked_features: None,
            acked_protocol: 0,
            status: 0,
            vrings: (0..pairs * 2).map(|_| VringConfig::default()).collect(),
            workers: (0..pairs).map(|_| None).collect(),
            log: None,
            log_fd: None,
            announced: false,
            link_handed_over: false,
            config,
        }
    }

    /// Whether VIRTIO_F_RING_PACKED was acked: every ring is packed, its ring base
    /// the packed word form ([`PackedIndices`]).
    fn packed(&self) -> bool {
        self.acked_features
            .is_some_and(|f| Features::from_bits(f).has(VIRTIO_F_RING_PACKED))
    }

    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was acked (SET_FEATURES seen with it).
    pub fn protocol_features_acked(&self) -> bool {
        self.acked_features
            .is_some_and(|f| f & (1 << VHOST_USER_F_PROTOCOL_FEATURES) != 0)
    }

    /// Whether replies to NEED_REPLY requests are on (REPLY_ACK negotiated).
    pub fn reply_ack_acked(&self) -> bool {
        self.protocol_features_acked()
            && self.acked_protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// The guest memory of this connection.
    pub fn memory(&self) -> &Arc<SharedPageMap> {
        &self.memory
    }

    /// VHOST_USER_SEND_RARP: announce the guest's `mac` out of the uplink.
    pub fn send_rarp(&self, mac: [u8; 6]) -> Result<(), crate::uplink::UplinkError> {
        let frame = crate::uplink::announce::rarp_frame(mac);
        self.uplink.announce(&frame)?;
        log::info!(
            "announced {} with a RARP broadcast out of {}",
            crate::config::format_mac(mac),
            self.uplink.describe()
        );
        Ok(())
    }

    /// Whether protocol feature `f` was acked.
    pub fn protocol_acked(&self, f: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol & f.bits() == f.bits()
    }

    /// VHOST_USER_SET_LOG_FD: kept until the connection ends (the backend signals
    /// nothing on it: its log is the shared bitmap).
    pub fn set_log_fd(&mut self, file: File) {
        self.log_fd = Some(file);
    }

    /// Device status (VHOST_USER_SET_STATUS).
    pub fn set_status(&mut self, status: u8) {
        self.status = status;
    }

    /// Device status (VHOST_USER_GET_STATUS).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Record SET_VRING_ENABLE, including the early ones QEMU 7.2 sends before
    /// SET_FEATURES (which the protocol layer refuses): they are applied once the
    /// rings start.
    pub fn record_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let i = self.ring_index(index)?;
        self.vrings[i].enabled = enable;
        self.sync_pair(i / 2);
        Ok(())
    }

    fn ring_index(&self, index: u32) -> VhostResult<usize> {
        let i = usize::try_from(index).map_err(|_| VhostError::InvalidParam)?;
        if i >= self.vrings.len() {
            crate::log_limited!(
                super::control_log(),
                warn,
                "frontend named ring {index}; this device has {}",
                self.vrings.len()
            );
            return Err(VhostError::InvalidParam);
        }
        Ok(i)
    }

    /// Stop pair `pair`'s worker, folding its ring indices back into the configs.
    fn stop_pair(&mut self, pair: usize) {
        if let Some(w) = self.workers[pair].take() {
            let state = w.stop();
            for (v, indices) in [(2 * pair, state.rx), (2 * pair + 1, state.tx)] {
                if let Some((a, u)) = indices {
                    let v = &mut self.vrings[v];
                    v.next_avail = a;
                    v.next_used = Some(u);
                    v.base_from_frontend = false;
                }
            }
            self.uplink.return_queue(pair, state.uplink);
        }
    }

    fn ring_setup(&self, i: usize, features: Features) -> Option<RingSetup> {
        let v = &self.vrings[i];
        if !v.is_active(self.protocol_features_acked()) {
            return None;
        }
        let (desc, avail, used) = v.addrs?;
        let kick = v.kick.as_ref()?.try_clone().ok()?;
        let (next_avail, next_used) = if features.has(VIRTIO_F_RING_PACKED) {
            // A packed ring's used position is not in guest memory: SET_VRING_BASE
            // names it (or says it is where avail is), and so does a stopped worker.
            let base = PackedIndices::from_words(v.next_avail, v.next_used.unwrap_or(v.next_avail));
            if v.base_from_frontend {
                self.packed_resume(i, desc, base).words()
            } else {
                base.words()
            }
        } else {
            let next_used = v
                .next_used
                .unwrap_or_else(|| self.used_idx_in_memory(i, used));
            (v.next_avail, next_used)
        };
        Some(RingSetup {
            size: v.size,
            desc,
            avail,
            used,
            next_avail,
            next_used,
            kick,
            call: v.call.as_ref().and_then(|c| c.try_clone().ok()),
            event_idx: features.has(VIRTIO_RING_F_EVENT_IDX),
            indirect: features.has(VIRTIO_RING_F_INDIRECT_DESC),
            log: self
                .log
                .as_ref()
                .filter(|_| features.has(VHOST_F_LOG_ALL))
                .map(|l| (Arc::clone(l), v.log_addr.unwrap_or(used))),
        })
    }

    /// Where packed ring `i` (descriptors at `desc`) starts from the frontend's `base`:
    /// there, unless the ring in guest memory shows the base is stale (a killed
    /// backend's successor gets the base of an earlier start from QEMU), and then at
    /// the device's used position the descriptors' flags show
    /// ([`crate::datapath::ring::packed::resume`]).
    fn packed_resume(&self, i: usize, desc: u64, base: PackedIndices) -> PackedIndices {
        let v = &self.vrings[i];
        let show = |p: PackedIndices| {
            format!(
                "avail {}/{} used {}/{}",
                p.avail.index, p.avail.wrap as u8, p.used.index, p.used.wrap as u8
            )
        };
        match check_base(&self.memory.load(), desc, v.size, base) {
            Resume::Base => base,
            Resume::Recovered(p) => {
                log::warn!(
                    "ring {i}: the frontend's base ({}) is behind the ring in guest memory \
                     (the previous backend went on from it without handing its positions \
                     back); resuming at {} from the descriptors' flags, chains it held are \
                     taken again",
                    show(base),
                    show(p)
                );
                p
            }
            Resume::Unknown => {
                log::warn!(
                    "ring {i}: the frontend's base ({}) is behind the ring in guest memory, \
                     whose flags do not show where it stands; starting from the base",
                    show(base)
                );
                base
            }
        }
    }

    /// The used index ring `i` shows the guest (its used ring at `used`), read when a
    /// ring starts after SET_VRING_BASE. It differs from the avail base when the
    /// frontend counts chains as done that the device never returned (cloud-hypervisor
    /// reconnects with the avail index as the base): those stay with the frontend, and
    /// the device goes on where the guest's used ring stands, so the guest never sees an
    /// entry it did not get.
    fn used_idx_in_memory(&self, i: usize, used: u64) -> u16 {
        let v = &self.vrings[i];
        let map = self.memory.load();
        let Some(idx) = used
            .checked_add(2)
            .and_then(|a| map.load_u16(a, std::sync::atomic::Ordering::Acquire))
        else {
            return v.next_avail;
        };
        let gap = v.next_avail.wrapping_sub(idx);
        if gap != 0 && gap <= v.size {
            log::warn!(
                "ring {i}: starts at avail index {} with used index {idx}: {gap} chain(s) the \
                 frontend counted as done were never returned by this backend",
                v.next_avail
            );
        } else if gap != 0 {
            log::warn!(
                "ring {i}: used index {idx} in guest memory is not within a ring of the avail \
                 base {}; starting from the base",
                v.next_avail
            );
            return v.next_avail;
        }
        idx
    }

    /// Restart pair `pair` with the current ring configuration.
    fn sync_pair(&mut self, pair: usize) {
        self.stop_pair(pair);
        let Some(acked) = self.acked_features else {
            return;
        };
        let features = Features::from_bits(acked);
        let rx = self.ring_setup(2 * pair, features);
        let tx = self.ring_setup(2 * pair + 1, features);
        if rx.is_none() && tx.is_none() {
            return;
        }
        let uplink = match self.uplink.take_queue(pair) {
            Ok(q) => q,
            Err(e) => {
                log::error!("queue pair {pair}: {e}");
                return;
            }
        };
        // A fresh ring starts at 0 (split), or at index 0 with wrap counter 1 (packed).
        let fresh = if features.has(VIRTIO_F_RING_PACKED) {
            PackedIndices::START.avail.word()
        } else {
            0
        };
        let resumed = rx.as_ref().is_some_and(|r| r.next_avail != fresh);
        let receives = rx.is_some();
        let spec = WorkerSpec {
            pair,
            rx,
            tx,
            features,
            mtu: self.config.mtu,
            max_queue_size: self.config.queue_size,
            memory: Arc::clone(&self.memory),
            metrics: self.metrics.queue(pair),
            uplink,
            busy_poll: self.config.busy_poll,
            tx_holdoff: self.config.tx_holdoff,
            rate_limits: Arc::clone(&self.rate_limits),
        };
        match PairWorker::spawn(spec) {
            Ok(w) => self.workers[pair] = Some(w),
            Err(e) => {
                log::error!("queue pair {pair}: cannot start worker: {e}");
                return;
            }
        }
        if receives {
            self.restore_link();
        }
        if resumed {
            self.announce_resume();
        }
    }

    /// The source of a live migration stops the device while LOG_ALL is acked: the
    /// guest leaves this uplink. Take the uplink's carrier down (TAP: TUNSETCARRIER), so
    /// the bridge beside it forgets the guest's MAC at once (the kernel's bridge flushes
    /// a port's addresses when its carrier goes) instead of forwarding every frame for
    /// the guest into a queue nobody reads until the guest announces itself from its
    /// new port. A bridge that no longer knows the MAC floods the frames, and the
    /// destination's TAP, attached but not yet read, keeps them for the guest. The
    /// carrier comes back when a receive ring starts here again (a migration that
    /// failed after the stop resumes the guest on the source) or the frontend goes.
    fn hand_over_link(&mut self) {
        if !logs_all(self.acked_features) || self.link_handed_over {
            return;
        }
        self.link_handed_over = true;
        match self.uplink.set_carrier(false) {
            Ok(()) => log::info!(
                "guest handed over (migration): {} carrier down",
                self.uplink.describe()
            ),
            Err(crate::uplink::UplinkError::Io(e))
                if e.kind() == std::io::ErrorKind::Unsupported =>
            {
                log::debug!("handover: carrier left as it is: {e}")
            }
            Err(e) => log::warn!(
                "{}: cannot take the carrier down for the handover: {e}",
                self.uplink.describe()
            ),
        }
    }

    /// Undo [`Self::hand_over_link`].
    fn restore_link(&mut self) {
        if !std::mem::take(&mut self.link_handed_over) {
            return;
        }
        match self.uplink.set_carrier(true) {
            Ok(()) => log::info!("{} carrier up", self.uplink.describe()),
            Err(e) => log::warn!(
                "{}: cannot bring the carrier up: {e}",
                self.uplink.describe()
            ),
        }
    }

    /// A receive ring that starts from a non-zero base resumes a running guest: the
    /// destination of a live migration, or a frontend reconnecting to a restarted
    /// backend. Its MAC now sits behind this uplink, and the switches do not know it:
    /// announce it with a RARP broadcast at once, once per device start. QEMU does that
    /// itself only for guests without GUEST_ANNOUNCE (SEND_RARP); with it, the guest
    /// announces itself, which under load or TCG comes tens to hundreds of
    /// milliseconds later, and every packet for the guest until then goes to the old
    /// port. The MAC is the configured one (`--mac`), the one the frontend's device
    /// must carry.
    fn announce_resume(&mut self) {
        if self.announced {
            return;
        }
        self.announced = true;
        match self.send_rarp(self.config.mac) {
            Ok(()) => {}
            Err(crate::uplink::UplinkError::Io(e))
                if e.kind() == std::io::ErrorKind::Unsupported =>
            {
                log::debug!("resumed guest not announced: {e}")
            }
            Err(e) => log::warn!("cannot announce the resumed guest: {e}"),
        }
    }

    fn sync_all(&mut self) {
        for pair in 0..self.workers.len() {
            self.sync_pair(pair);
        }
    }

    /// Stop every worker and give the uplink queues back (end of connection).
    pub fn shutdown(&mut self) {
        for pair in 0..self.workers.len() {
            self.stop_pair(pair);
        }
        self.restore_link();
        self.uplink.detach_memory();
        self.memory.clear();
        self.replace_log(None);
        self.log_fd = None;
    }

    /// Put `new` in place of the dirty log (None: the connection ends), reporting the
    /// writes the old one could not log: the frontend would otherwise migrate stale
    /// pages without anyone saying so.
    fn replace_log(&mut self, new: Option<Arc<DirtyLog>>) {
        let Some(old) = std::mem::replace(&mut self.log, new) else {
            return;
        };
        if old.missed() > 0 {
            log::error!(
                "{} page writes were beyond the dirty log (it covers guest memory up to {:#x}) and could not be logged",
                old.missed(),
                old.covers()
            );
        }
    }

    fn eventfd(file: Option<File>) -> Option<EventFd> {
        // SAFETY: the fd comes from a File we own (received over the socket); ownership
        // moves into the EventFd, which closes it exactly once.
        file.map(|f| unsafe { EventFd::from_raw_fd(f.into_raw_fd()) })
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl VhostUserBackendReqHandlerMut for NetBackend {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.shutdown();
        self.acked_features = None;
        for v in &mut self.vrings {
            *v = VringConfig::default();
        }
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        self.reset_owner()
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.offered)
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.offered != 0 {
            crate::log_limited!(
                super::control_log(),
                warn,
                "frontend acked features {:#x} that were not offered",
                features & !self.offered
            );
            return Err(VhostError::InvalidParam);
        }
        if Features::from_bits(features).has(VHOST_F_LOG_ALL) && self.log.is_none() {
            log::error!("frontend acked LOG_ALL without a dirty log (SET_LOG_BASE): refused");
            return Err(VhostError::InvalidParam);
        }
        match (logs_all(self.acked_features), logs_all(Some(features))) {
            (false, true) => log::info!("dirty logging on (live migration)"),
            (true, false) => log::info!("dirty logging off"),
            _ => {}
        }
        self.acked_features = Some(features);
        if let Err(e) = self.uplink.apply_features(Features::from_bits(features)) {
            log::error!("{}: {e}", self.uplink.describe());
        }
        log::info!("features acked: {features:#x}");
        self.sync_all();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let specs = ctx
            .iter()
            .zip(files)
            .map(|(r, file)| RegionSpec {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                file,
                offset: r.mmap_offset,
                user_addr: r.user_addr,
            })
            .collect();
        self.memory.set_table(specs).map_err(|e| {
            crate::log_limited!(super::control_log(), warn, "SET_MEM_TABLE refused: {e}");
            VhostError::InvalidParam
        })?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let i = self.ring_index(index)?;
        // A packed ring may have any size; a split one's is a power of two.
        let packed = self.packed();
        let size = u16::try_from(num).ok().filter(|n| {
            *n != 0
                && (packed || n.is_power_of_two())
                && *n <= self.config.queue_size.min(MAX_PACKED_SIZE)
        });
        let Some(size) = size else {
            crate::log_limited!(
                super::control_log(),
                warn,
                "ring {index}: size {num} refused ({} up to {})",
                if packed {
                    "packed ring"
                } else {
                    "power of two"
                },
                self.config.queue_size
            );
            return Err(VhostError::InvalidParam);
        };
        self.vrings[i].size = size;
        self.sync_pair(i / 2);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VhostResult<()> {
        let i = self.ring_index(index)?;
        let map = self.memory.load();
        let t = |va: u64| map.va_to_gpa(va);
        let (Some(d), Some(a), Some(u)) = (t(descriptor), t(available), t(used)) else {
            crate::log_limited!(
                super::control_log(),
                warn,
                "ring {index}: ring addresses are not in the memory table"
            );
            return Err(VhostError::InvalidParam);
        };
        self.vrings[i].addrs = Some((d, a, u));
        self.vrings[i].log_addr = flags
            .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
            .then_some(log);
        self.sync_pair(i / 2);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let i = self.ring_index(index)?;
        if self.packed() {
            // Both positions with their wrap counters (bits 0-15 avail, 16-31 used).
            let (avail, used) = PackedIndices::from_vring_base(base).words();
            self.vrings[i].next_avail = avail;
            self.vrings[i].next_used = Some(used);
            self.vrings[i].base_from_frontend = true;
        } else {
            let base = u16::try_from(base).map_err(|_| VhostError::InvalidParam)?;
            self.vrings[i].next_avail = base;
            self.vrings[i].next_used = None;
        }
        self.sync_pair(i / 2);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        let i = self.ring_index(index)?;
        let pair = i / 2;
        // Before the worker stops, so what the bridge sends until it has forgotten
        // the guest is still read into the guest's buffers.
        self.hand_over_link();
        self.stop_pair(pair);
        // The ring is stopped until its next SET_VRING_KICK; the device stops with it
        // (the source of a migration), so a later resume announces again (a cancelled
        // migration moves the guest back here).
        self.vrings[i].kick = None;
        self.announced = false;
        self.sync_pair(pair);
        let v = &self.vrings[i];
        let base = if self.packed() {
            PackedIndices::from_words(v.next_avail, v.next_used.unwrap_or(v.next_avail))
                .vring_base()
        } else {
            u32::from(v.next_avail)
        };
        Ok(VhostUserVringState::new(index, base))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.ring_index(u32::from(index))?;
        let Some(kick) = Self::eventfd(fd) else {
            crate::log_limited!(
                super::control_log(),
                warn,
                "ring {index}: polling mode (no kick fd) is not supported"
            );
            return Err(VhostError::InvalidParam);
        };
        self.vrings[i].kick = Some(kick);
        self.sync_pair(i / 2);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.ring_index(u32::from(index))?;
        self.vrings[i].call = Self::eventfd(fd);
        self.sync_pair(i / 2);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        self.ring_index(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(u64::from(self.config.queue_pairs) * 2)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        self.record_enable(index, enable)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        NetConfigSpace::new(self.config.mac, self.config.queue_pairs, self.config.mtu)
            .read(offset, size)
            .ok_or(VhostError::InvalidParam)
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        Err(refuse("the config space is read-only"))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(refuse("not a gpu device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(refuse("shared objects are not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        Err(refuse("inflight tracking is not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VhostResult<()> {
        Err(refuse("inflight tracking is not offered"))
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_REGIONS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        let spec = RegionSpec {
            gpa: region.guest_phys_addr,
            size: region.memory_size,
            file: fd,
            offset: region.mmap_offset,
            user_addr: region.user_addr,
        };
        self.memory.add_region(spec).map_err(|e| {
            crate::log_limited!(super::control_log(), warn, "ADD_MEM_REG refused: {e}");
            VhostError::InvalidParam
        })?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        self.memory
            .remove_region(region.guest_phys_addr, region.memory_size)
            .map_err(|e| {
                crate::log_limited!(super::control_log(), warn, "REM_MEM_REG refused: {e}");
                VhostError::InvalidParam
            })
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(refuse("device state transfer is not offered"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(refuse("device state transfer is not offered"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(refuse("shared memory regions are not offered"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VhostResult<()> {
        let guest_end = self.memory.load().guest_end();
        let new = DirtyLog::map(file, log.mmap_size, log.mmap_offset, guest_end).map_err(|e| {
            log::error!("SET_LOG_BASE: {e}");
            VhostError::InvalidParam
        })?;
        log::info!(
            "dirty log: {} bytes covering guest memory up to {:#x}",
            log.mmap_size,
            new.covers()
        );
        self.replace_log(Some(Arc::new(new)));
        // Running rings move to the new log.
        self.sync_all();
        Ok(())
    }
}
