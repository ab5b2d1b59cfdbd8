// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One virtqueue of the guest driver: its ring in guest memory (split, or packed with
//! [`Vq::new_packed`]), its kick and call eventfds, and the waits for used entries (as
//! a driver that sleeps on calls, or as a plain poll); an RX and a TX queue make a
//! queue pair. What depends on the layout goes through [`Vq`]'s own methods.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::daemon::DaemonLog;
use super::memory::TestMemory;
use vhost::VringConfigData;
use vm_memory::GuestAddress;

use super::packed_ring::PackedRing;
use super::ring::{Buf, SplitRing, Used};

/// One virtqueue of the guest with its eventfds.
pub struct Vq {
    /// vhost-user ring index.
    pub index: usize,
    /// The split ring (allocated but unused when the queue is packed).
    pub ring: SplitRing,
    /// The packed ring, when the queue is packed (VIRTIO_F_RING_PACKED).
    pub packed: Option<PackedRing>,
    /// Kick eventfd (guest -> device).
    pub kick: EventFd,
    /// Call eventfd (device -> guest).
    pub call: EventFd,
    /// Call signals consumed so far.
    pub calls: u64,
}

impl Vq {
    /// Ring `index` of `size` entries in `region`, with fresh eventfds.
    pub fn new(mem: &TestMemory, index: usize, size: u16, region: usize) -> Vq {
        Vq {
            index,
            ring: SplitRing::new(mem, region, size),
            packed: None,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
            calls: 0,
        }
    }

    /// [`Self::new`] with a packed ring of `size` descriptors (any size).
    pub fn new_packed(mem: &TestMemory, index: usize, size: u16, region: usize) -> Vq {
        let packed = PackedRing::new(mem, region, size);
        packed.enable_calls(mem);
        Vq {
            // A one-entry split ring nobody drives keeps the struct one shape.
            packed: Some(packed),
            ..Vq::new(mem, index, 1, region)
        }
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        match &self.packed {
            Some(p) => p.size(),
            None => self.ring.size(),
        }
    }

    /// SET_VRING_BASE for where the driver stands: the split ring's used index in
    /// memory (as QEMU replays it), the packed ring's two positions.
    pub fn vring_base(&self, mem: &TestMemory) -> u32 {
        match &self.packed {
            Some(p) => p.vring_base(),
            None => u32::from(self.ring.used_idx(mem)),
        }
    }

    /// SET_VRING_ADDR payload.
    pub fn config_data(&self, mem: &TestMemory) -> VringConfigData {
        match &self.packed {
            Some(p) => p.config_data(mem),
            None => self.ring.config_data(mem),
        }
    }

    /// Follow EVENT_IDX.
    pub fn set_event_idx(&mut self, on: bool) {
        match &mut self.packed {
            Some(p) => p.set_event_idx(on),
            None => self.ring.set_event_idx(on),
        }
    }

    /// Add (not publish) a chain of `bufs`; returns its head (split) or id (packed).
    pub fn add_chain(&mut self, mem: &TestMemory, bufs: &[Buf]) -> u16 {
        match &mut self.packed {
            Some(p) => p.add_chain(mem, bufs),
            None => self.ring.add_chain(mem, bufs),
        }
    }

    /// Add (not publish) a chain of `bufs` as an indirect table at `table`.
    pub fn add_indirect(&mut self, mem: &TestMemory, table: GuestAddress, bufs: &[Buf]) -> u16 {
        match &mut self.packed {
            Some(p) => p.add_indirect(mem, table, bufs),
            None => self.ring.add_indirect(mem, table, bufs),
        }
    }

    /// Chains posted and not used yet.
    pub fn in_flight(&self) -> usize {
        match &self.packed {
            Some(p) => p.in_flight(),
            None => self.ring.in_flight(),
        }
    }

    fn take_used(&mut self, mem: &TestMemory, context: &dyn Fn() -> String) -> Vec<Used> {
        match &mut self.packed {
            Some(p) => p.take_used(mem, context),
            None => self.ring.take_used(mem, context),
        }
    }

    /// Consume a pending call signal without waiting; returns whether there was one.
    pub fn take_call(&mut self) -> bool {
        match self.call.read() {
            Ok(n) => {
                self.calls += n;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("read call eventfd: {e}"),
        }
    }

    /// Whether the device signalled the call eventfd since the counter was last reset
    /// (consumes a pending signal).
    pub fn was_called(&mut self) -> bool {
        self.take_call();
        self.calls > 0
    }

    /// Wait up to `timeout` for a call signal and consume it.
    pub fn wait_call(&mut self, timeout: Duration) -> bool {
        if self.take_call() {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one live pollfd and the count passed is 1; result checked.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        rc > 0 && self.take_call()
    }

    /// Make posted chains visible; kick when the device asked for it (or always,
    /// unless `honour_avail_event`).
    pub fn publish(&mut self, mem: &TestMemory, honour_avail_event: bool) -> bool {
        let need = match &mut self.packed {
            Some(p) => p.publish(mem),
            None => self.ring.publish(mem),
        };
        if need || !honour_avail_event {
            self.kick.write(1).expect("kick");
        }
        need
    }

    /// Take used entries until there are at least `min` or `timeout` passed. As a
    /// driver (`driver`): re-arm used_event with EVENT_IDX before sleeping and sleep
    /// on the call eventfd (consuming calls); otherwise poll without touching either.
    fn gather_used(
        &mut self,
        mem: &TestMemory,
        min: usize,
        timeout: Duration,
        log: &DaemonLog,
        driver: bool,
    ) -> Vec<Used> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let index = self.index;
            got.extend(self.take_used(mem, &|| format!(" (vring {index}){}", log.context())));
            if got.len() >= min {
                return got;
            }
            if driver && self.packed.is_none() && self.ring.event_idx() {
                // Ask for a call at the next used entry, then re-check (the race every
                // driver closes this way).
                self.ring.set_used_event(mem, self.ring.last_used());
                if self.ring.has_used(mem) {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return got;
            }
            if driver {
                self.wait_call((deadline - now).min(Duration::from_millis(200)));
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Collect used entries until there are at least `min` or `timeout` passed
    /// (consuming calls on the way, and re-arming used_event with EVENT_IDX, as a
    /// driver does before it sleeps). May return fewer than `min`.
    pub fn collect_used(
        &mut self,
        mem: &TestMemory,
        min: usize,
        timeout: Duration,
        log: &DaemonLog,
    ) -> Vec<Used> {
        self.gather_used(mem, min, timeout, log, true)
    }

    /// [`Self::collect_used`], failing unless `min` entries arrive within `timeout`.
    pub fn wait_used(
        &mut self,
        mem: &TestMemory,
        min: usize,
        timeout: Duration,
        log: &DaemonLog,
    ) -> Vec<Used> {
        let got = self.collect_used(mem, min, timeout, log);
        if got.len() < min {
            panic!(
                "vring {}: waited {timeout:?} for {min} used entries, got {} \
                 (used.idx {} in memory, {} chains still posted, {} calls seen){}",
                self.index,
                got.len(),
                self.vring_base(mem),
                self.in_flight(),
                self.calls,
                log.context()
            );
        }
        got
    }

    /// Poll the used ring (no used_event re-arming, no call consumed) until `min`
    /// entries arrived; fails after `timeout`.
    pub fn poll_used(
        &mut self,
        mem: &TestMemory,
        min: usize,
        timeout: Duration,
        log: &DaemonLog,
    ) -> Vec<Used> {
        let got = self.gather_used(mem, min, timeout, log, false);
        if got.len() < min {
            panic!(
                "vring {}: polled {timeout:?} for {min} used entries, got {}{}",
                self.index,
                got.len(),
                log.context()
            );
        }
        got
    }
}

/// An RX and a TX queue.
pub struct QueuePair {
    /// Receive queue (ring 2p).
    pub rx: Vq,
    /// Transmit queue (ring 2p+1).
    pub tx: Vq,
}

impl QueuePair {
    /// Both queues, TX first.
    pub fn both(&mut self) -> [&mut Vq; 2] {
        let QueuePair { rx, tx } = self;
        [tx, rx]
    }
}
