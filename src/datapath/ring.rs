// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A virtqueue as a worker sees it.
//!
//! - [`Ring`]: the split layout (this file).
//! - [`packed`]: the packed layout ([`PackedRing`]).
//! - [`virtqueue`]: the [`Virtqueue`] trait both implement and [`AnyRing`], the one
//!   interface TX and RX are to drive either layout through.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use std::sync::Arc;

use crate::netmem::{DirtyLog, GuestPageMap};
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::QueueMetrics;
use crate::virtio::ChainWalker;

/// Bytes before the first entry of the avail ring (flags, idx).
const AVAIL_RING_HEADER: u64 = 4;
/// Bytes before the first entry of the used ring (flags, idx).
const USED_RING_HEADER: u64 = 4;
/// One used ring entry (id: u32, len: u32).
const USED_ELEM_SIZE: u64 = 8;
/// What a fault found while popping or returning a chain was.
const UNREADABLE_ENTRY: &str = "virtqueue broken (a ring entry is outside guest memory)";

/// Everything needed to run one ring, handed from the control plane to a worker.
#[derive(Debug)]
pub struct RingSetup {
    /// Ring size.
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, avail and used rings.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Next avail index to process.
    pub next_avail: u16,
    /// Next used index to write.
    pub next_used: u16,
    /// The guest kicks this eventfd.
    pub kick: EventFd,
    /// We signal this eventfd (None: the frontend wants no interrupts).
    pub call: Option<EventFd>,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// RING_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// While the frontend logs dirty pages (LOG_ALL acked, a log set): the log, and
    /// the guest-physical address it names the used ring by (`log_guest_addr` with
    /// VHOST_VRING_F_LOG; the used ring's address otherwise).
    pub log: Option<(Arc<DirtyLog>, u64)>,
}

/// A running ring.
#[derive(Debug)]
pub struct Ring {
    /// virtio-queue's ring state (avail/used indices, notification suppression).
    pub queue: Queue,
    /// Kick eventfd.
    pub kick: EventFd,
    /// Call eventfd.
    pub call: Option<EventFd>,
    /// Descriptor chain walker for this ring.
    pub walker: ChainWalker,
    /// Set once the ring misbehaved; it is then ignored until set up again. A fault
    /// found where the counters were not at hand (popping a head, returning a chain) is
    /// counted at the next [`Self::available`] or [`Self::signal`].
    health: RingHealth,
    /// Used entries added since the last notification decision.
    pending_signal: bool,
    /// Next used index to write (entries are written one by one, the index is
    /// published once per batch).
    next_used: Wrapping<u16>,
    /// The used index the guest has been shown.
    published_used: Wrapping<u16>,
    /// The used index at the last notification decision (EVENT_IDX's "old").
    signalled_used: Wrapping<u16>,
    /// Whether `signalled_used` stands for a decision this ring made. A ring that
    /// just started does not know what the guest was last told (the previous worker
    /// may have signalled a call fd nobody reads: QEMU hands over a placeholder call
    /// fd first when it reconnects), so its first decision notifies; otherwise a guest
    /// whose `used_event` lags behind would never be woken (Linux vhost and DPDK do
    /// the same).
    signalled_valid: bool,
    /// The dirty log and the used ring's address in it, while the frontend logs.
    log: Option<(Arc<DirtyLog>, u64)>,
}

impl Ring {
    /// Build from a setup; fails if the ring parameters are unusable.
    pub fn new(setup: RingSetup, max_size: u16) -> Result<Self, virtio_queue::Error> {
        let mut queue = Queue::new(max_size)?;
        queue.try_set_size(setup.size)?;
        queue.try_set_desc_table_address(vm_memory::GuestAddress(setup.desc))?;
        queue.try_set_avail_ring_address(vm_memory::GuestAddress(setup.avail))?;
        queue.try_set_used_ring_address(vm_memory::GuestAddress(setup.used))?;
        queue.set_next_avail(setup.next_avail);
        queue.set_next_used(setup.next_used);
        queue.set_event_idx(setup.event_idx);
        queue.set_ready(true);
        Ok(Ring {
            walker: ChainWalker {
                desc_table: setup.desc,
                queue_size: setup.size,
                indirect: setup.indirect,
            },
            queue,
            kick: setup.kick,
            call: setup.call,
            health: RingHealth::default(),
            pending_signal: false,
            next_used: Wrapping(setup.next_used),
            published_used: Wrapping(setup.next_used),
            signalled_used: Wrapping(setup.next_used),
            signalled_valid: false,
            log: setup.log,
        })
    }

    /// The dirty log, while the frontend logs the backend's writes (live migration).
    pub fn log(&self) -> Option<&DirtyLog> {
        self.log.as_ref().map(|(l, _)| &**l)
    }

    /// Log a write of `len` bytes at `offset` into the used ring.
    fn log_used(&self, offset: u64, len: u64) {
        if let Some((log, used)) = &self.log {
            log.mark(used.saturating_add(offset), len);
        }
    }

    /// Log the used ring's flags and `avail_event`, which turning kicks on or off may
    /// write.
    fn log_notification(&self) {
        if self.log.is_some() {
            self.log_used(0, 2);
            let size = u64::from(self.queue.size());
            self.log_used(USED_RING_HEADER + size * USED_ELEM_SIZE, 2);
        }
    }

    /// Heads available to pop now; None (and the ring marked broken) when the avail
    /// index is impossible or unreadable, or the ring's entries are not all in guest
    /// memory (a readable index over unreadable entries would otherwise promise heads
    /// that [`Self::pop_head`] can never deliver, and RX would ask for them forever).
    pub fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16> {
        if self.health.is_broken() {
            self.health.report(m, UNREADABLE_ENTRY);
            return None;
        }
        let Some(avail) = map.load_u16(self.queue.avail_ring() + 2, Ordering::Acquire) else {
            return self.broken(m);
        };
        let entries = self.queue.avail_ring().checked_add(AVAIL_RING_HEADER);
        let size = 2 * u64::from(self.queue.size());
        if !entries.is_some_and(|at| map.contains(at, size)) {
            return self.broken(m);
        }
        let avail = Wrapping(avail);
        let pending = (avail - Wrapping(self.queue.next_avail())).0;
        if pending > self.queue.size() {
            return self.broken(m);
        }
        Some(pending)
    }

    fn broken(&mut self, m: &QueueMetrics) -> Option<u16> {
        self.health.break_now(
            m,
            "virtqueue broken (impossible avail index or unreadable ring)",
        );
        None
    }

    /// The fault that stopped the ring, if any.
    pub fn fault(&self) -> Option<RingFault> {
        self.health.fault()
    }

    /// Pop the next head (call only after [`Self::available`] said there is one: its
    /// acquire load of the avail index orders this read of the ring entry). None, and
    /// the ring marked broken, when the entry cannot be read (the memory changed since
    /// [`Self::available`] checked it).
    pub fn pop_head(&mut self, map: &GuestPageMap) -> Option<u16> {
        let next = self.queue.next_avail();
        // Ring sizes are powers of two, so the mask is the modulo.
        let slot = next & self.queue.size().wrapping_sub(1);
        let Some(head) = self
            .queue
            .avail_ring()
            .checked_add(AVAIL_RING_HEADER + u64::from(slot) * 2)
            .and_then(|addr| map.read_array::<2>(addr))
        else {
            self.health.break_later();
            return None;
        };
        self.queue.set_next_avail(next.wrapping_add(1));
        Some(u16::from_le_bytes(head))
    }

    /// Give back the last `n` popped heads (they will be popped again).
    pub fn unpop(&mut self, n: u16) {
        let next = Wrapping(self.queue.next_avail()) - Wrapping(n);
        self.queue.set_next_avail(next.0);
    }

    /// Return a chain to the guest with `len` bytes written. The entry is written now;
    /// the guest sees it when the batch is published by [`Self::signal`]. False for a
    /// head beyond the ring (nothing to return) or a used ring outside guest memory
    /// (the ring is then broken).
    pub fn add_used(&mut self, map: &GuestPageMap, head: u16, len: u32) -> bool {
        let size = self.queue.size();
        if head >= size {
            return false;
        }
        let slot = self.next_used.0 & size.wrapping_sub(1);
        let Some(addr) = self
            .queue
            .used_ring()
            .checked_add(USED_RING_HEADER + u64::from(slot) * USED_ELEM_SIZE)
        else {
            self.health.break_later();
            return false;
        };
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if !map.write_array(addr, elem) {
            self.health.break_later();
            return false;
        }
        self.log_used(
            USED_RING_HEADER + u64::from(slot) * USED_ELEM_SIZE,
            USED_ELEM_SIZE,
        );
        self.next_used += Wrapping(1);
        self.pending_signal = true;
        true
    }

    /// Make the written used entries visible: one release store of the used index.
    fn publish_used(&mut self, map: &GuestPageMap) {
        if self.published_used == self.next_used {
            return;
        }
        let idx_addr = self.queue.used_ring() + 2;
        if map.store_u16(idx_addr, self.next_used.0, Ordering::Release) {
            self.log_used(2, 2);
            self.published_used = self.next_used;
        } else {
            self.health.break_later();
        }
    }

    /// Whether the guest wants an interrupt for the entries published since the last
    /// decision: EVENT_IDX's `used_event`, or else the NO_INTERRUPT flag.
    fn needs_notification(&mut self, map: &GuestPageMap) -> bool {
        // The used index store must be visible before we read the guest's wish.
        std::sync::atomic::fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        if !std::mem::replace(&mut self.signalled_valid, true) {
            return true;
        }
        let avail = self.queue.avail_ring();
        if self.queue.event_idx_enabled() {
            let used_event_addr = avail + AVAIL_RING_HEADER + 2 * u64::from(self.queue.size());
            match map.read_array::<2>(used_event_addr) {
                Some(b) => {
                    let used_event = Wrapping(u16::from_le_bytes(b));
                    // vring_need_event: used_event within (old, new].
                    new - used_event - Wrapping(1) < new - old
                }
                None => true,
            }
        } else {
            match map.read_array::<2>(avail) {
                Some(b) => u32::from(u16::from_le_bytes(b)) & VRING_AVAIL_F_NO_INTERRUPT == 0,
                None => true,
            }
        }
    }

    /// Publish the used entries and notify the guest unless EVENT_IDX (or the
    /// NO_INTERRUPT flag) suppresses it.
    pub fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics) {
        self.health.report(m, UNREADABLE_ENTRY);
        if !self.pending_signal {
            return;
        }
        self.pending_signal = false;
        self.publish_used(map);
        let needed = self.needs_notification(map);
        if !needed {
            m.notifications_suppressed.inc();
            return;
        }
        if let Some(call) = &self.call {
            if call.write(1).is_ok() {
                m.notifications.inc();
            }
        }
    }

    /// Ask the guest to kick us when it adds buffers; returns true when buffers
    /// arrived meanwhile (process again before sleeping).
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        let more = self.queue.enable_notification(mem).unwrap_or(false);
        self.log_notification();
        more
    }

    /// Tell the guest not to kick while we are draining.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        let _ = self.queue.disable_notification(mem);
        self.log_notification();
    }

    /// (next_avail, next_used) for handing the ring back to the control plane.
    pub fn indices(&self) -> (u16, u16) {
        (self.queue.next_avail(), self.next_used.0)
    }
}

pub mod health;
pub mod packed;
pub mod virtqueue;

pub use health::{RingFault, RingHealth};

pub use packed::{PackedRing, PackedSetup};
pub use virtqueue::{AnyRing, Virtqueue};

#[cfg(test)]
mod tests;
