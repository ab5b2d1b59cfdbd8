// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A packed virtqueue (VIRTIO_F_RING_PACKED) as a worker sees it: the device side.
//!
//! One descriptor ring (16 bytes a descriptor: `addr`, `len`, buffer `id`, `flags`)
//! that the driver fills with available descriptors and the device overwrites with
//! used ones, in ring order; an available descriptor has its AVAIL flag equal to the
//! driver's wrap counter and USED the inverse, a used one both equal to the device's.
//! Beside it the driver's and the device's event suppression structures
//! ([`event`]). vhost-user names the three areas with the split ring's addresses:
//! descriptor ring (`desc`), driver area (`avail`), device area (`used`).
//!
//! [`PackedRing`] offers what the split [`Ring`](super::Ring) offers TX and RX (see
//! [`Virtqueue`](super::Virtqueue)), with one difference the layout forces: a chain
//! is read when it is popped ([`PackedRing::pop_chain`]), because its descriptors
//! are in the ring, where used descriptors written for other chains overwrite them.
//! A popped chain is its buffer id (from its last descriptor) and its segments.
//!
//! Everything the guest wrote is checked: the ring and the event structures in guest
//! memory and aligned, every descriptor of a chain available with the right wrap
//! counter, a chain no longer than the ring has room for (a wrap counter that lies
//! about descriptors still in use is caught here), buffer ids below the ring size and
//! not in use, lengths and addresses as the split walker checks them. A chain whose
//! buffers are bad is the chain's fault (the caller drops and returns it, as with the
//! split ring); whatever leaves the ring's own state unknowable (an id out of range
//! or in use, a chain that never ends, unreadable descriptors) breaks the ring
//! ([`RingFault::Broken`]) until it is set up again.
//!
//! Used descriptors are written `len` and `id` first, then the `flags` word with a
//! release store, so the driver that sees the flags sees the rest. Chains complete
//! in any order. With VIRTIO_F_IN_ORDER ([`PackedSetup::in_order`]) device-readable
//! chains returned empty in ring order (TX) are batched: one used descriptor, with
//! the last chain's id, written when the batch ends (at [`PackedRing::signal`], or
//! when a chain that cannot join arrives), and the driver takes the chains before it
//! as used too. Device-writable chains (RX) are never batched: a skipped buffer
//! counts as written completely.

pub mod event;
pub mod resume;

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use self::event::{
    reached, EventMode, RingPosition, EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE, EVENT_FLAGS_ENABLE,
};
use super::{RingFault, RingHealth};
use crate::metrics::QueueMetrics;
use crate::netmem::{DirtyLog, GuestPageMap};
use crate::virtio::chain::Segments;
use crate::virtio::{ChainError, ChainWalker};

/// One descriptor.
const DESC_SIZE: u64 = 16;
/// Offset of `flags` in a descriptor.
const FLAGS_OFFSET: u64 = 14;
/// One event suppression structure.
const EVENT_SIZE: u64 = 4;
/// Chains [`PackedRing::available`] counts at most: TX and RX ask again when they
/// have popped them (a batch is 256 chains at most; each look reads the flags of
/// every descriptor it counts, and the ring's own pops read them again).
pub const AVAILABLE_SCAN: u16 = 64;
/// The largest packed ring (virtio 1.2, 2.8: up to 2^15 entries).
pub const MAX_PACKED_SIZE: u16 = 1 << 15;

/// `flags`: the buffer continues in the next descriptor.
pub const DESC_F_NEXT: u16 = 1;
/// `flags`: device-writable (in a used descriptor: the device wrote into the buffer).
pub const DESC_F_WRITE: u16 = 2;
/// `flags`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// `flags`: the AVAIL bit.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// `flags`: the USED bit.
pub const DESC_F_USED: u16 = 1 << 15;

/// Why a packed ring cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PackedRingError {
    /// packed ring size {0} is not between 1 and 32768
    #[error("packed ring size {0} is not between 1 and 32768")]
    Size(u16),
    /// a part of the ring is not aligned as the layout requires
    #[error("packed ring {part} at {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which part.
        part: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// a part of the ring that wraps around the address space
    #[error("packed ring {part} at {gpa:#x} wraps around the address space")]
    Wraps {
        /// Which part.
        part: &'static str,
        /// Its guest-physical address.
        gpa: u64,
    },
    /// a starting index beyond the ring
    #[error("packed ring index {index} beyond a ring of {size}")]
    IndexBeyondRing {
        /// The index.
        index: u16,
        /// The ring size.
        size: u16,
    },
}

/// Where a packed ring stands: next descriptor to read, next to write as used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedIndices {
    /// The next descriptor to process and the driver's wrap counter there.
    pub avail: RingPosition,
    /// Where the next used descriptor goes and the device's wrap counter there.
    pub used: RingPosition,
}

impl PackedIndices {
    /// A fresh ring: both at index 0 with wrap counter 1.
    pub const START: PackedIndices = PackedIndices {
        avail: RingPosition::START,
        used: RingPosition::START,
    };

    /// From the vhost-user ring base (`SET_VRING_BASE`, the protocol's "descriptor
    /// indices" of a packed ring): bits 0-14 the next avail index, bit 15 the driver's
    /// wrap counter, bits 16-30 the next used index, bit 31 the device's wrap
    /// counter. An upper half of zero is read as "used where avail is": frontends that
    /// send the avail half only do so for a ring stopped with nothing in flight. The
    /// one state this misreads is used exactly at index 0 with wrap counter 0 while
    /// chains are in flight; a ring handed over with nothing in flight (what the
    /// worker leaves when it stops) is never misread.
    pub fn from_vring_base(num: u32) -> Self {
        let [a0, a1, u0, u1] = num.to_le_bytes();
        let avail = RingPosition::from_word(u16::from_le_bytes([a0, a1]));
        let used_word = u16::from_le_bytes([u0, u1]);
        let used = if used_word == 0 {
            avail
        } else {
            RingPosition::from_word(used_word)
        };
        PackedIndices { avail, used }
    }

    /// From the two words a stopped worker hands back ([`Self::words`]), read
    /// literally (no zero rule: a used word of 0 is index 0 with wrap counter 0).
    pub fn from_words(avail: u16, used: u16) -> Self {
        PackedIndices {
            avail: RingPosition::from_word(avail),
            used: RingPosition::from_word(used),
        }
    }

    /// (avail, used), each with its wrap counter in bit 15: what a stopped worker
    /// hands back to the control plane, as the split ring's `indices()` does.
    pub fn words(self) -> (u16, u16) {
        (self.avail.word(), self.used.word())
    }

    /// The vhost-user ring base (`GET_VRING_BASE`): avail in bits 0-15, used in bits
    /// 16-31, each with its wrap counter in its bit 15.
    pub fn vring_base(self) -> u32 {
        u32::from(self.avail.word()) | (u32::from(self.used.word()) << 16)
    }
}

/// Everything needed to run one packed ring, handed from the control plane to a
/// worker.
#[derive(Debug)]
pub struct PackedSetup {
    /// Ring size (1 ..= 32768; need not be a power of two).
    pub size: u16,
    /// Guest-physical address of the descriptor ring (16-byte aligned).
    pub desc: u64,
    /// The driver event suppression structure (vhost-user's avail address; 4-aligned).
    pub driver_event: u64,
    /// The device event suppression structure (vhost-user's used address; 4-aligned).
    pub device_event: u64,
    /// Where to resume.
    pub indices: PackedIndices,
    /// The guest kicks this eventfd.
    pub kick: EventFd,
    /// We signal this eventfd (None: the frontend wants no interrupts).
    pub call: Option<EventFd>,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// RING_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER negotiated: the caller returns chains in the order they were
    /// popped, and device-readable ones returned empty are batched.
    pub in_order: bool,
    /// While the frontend logs dirty pages: the log (the ring's writes are logged at
    /// their guest-physical addresses).
    pub log: Option<Arc<DirtyLog>>,
}

/// A chain taken off a ring: the id to return it by, and whether its buffers are
/// usable (the segments are in the caller's [`Segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoppedChain {
    /// The id [`PackedRing::add_used`] (or the split ring's) returns it by.
    pub id: u16,
    /// Ok, or what is wrong with its buffers (drop it and return it with length 0).
    pub chain: Result<(), ChainError>,
    /// The ring slots it takes until it is returned: a packed chain's descriptors, a
    /// split chain's entries in the descriptor table. The driver has the ring's size
    /// of them in all.
    pub slots: u16,
}

/// One descriptor as read from the ring or an indirect table.
#[derive(Debug, Clone, Copy)]
struct PackedDesc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

impl PackedDesc {
    fn decode(raw: [u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, i0, i1, f0, f1] = raw;
        PackedDesc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            id: u16::from_le_bytes([i0, i1]),
            flags: u16::from_le_bytes([f0, f1]),
        }
    }
}

/// Whether `flags` mark a descriptor available to a device expecting wrap counter
/// `wrap`.
fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

/// A running packed ring.
#[derive(Debug)]
pub struct PackedRing {
    size: u16,
    desc: u64,
    driver_event: u64,
    device_event: u64,
    event_idx: bool,
    /// Kick eventfd.
    pub kick: EventFd,
    /// Call eventfd.
    pub call: Option<EventFd>,
    /// The indirect-table and buffer checks shared with the split ring.
    walker: ChainWalker,
    /// Set once the ring misbehaved; it is then ignored until set up again. A fault
    /// found where the counters were not at hand is counted at the next
    /// [`Self::available`] or [`Self::signal`].
    health: RingHealth,
    next_avail: RingPosition,
    next_used: RingPosition,
    /// Ring descriptors each buffer id in use occupies (0: the id is free).
    in_use: Vec<u16>,
    /// Where each id's chain starts in the ring, and whether it has no device-writable
    /// buffer (for in-order batching).
    start_of: Vec<u16>,
    readable_only: Vec<bool>,
    in_order: bool,
    /// The in-order batch not written yet: its last id and its ring descriptors.
    batch: Option<(u16, u16)>,
    /// Ring descriptors of all chains in use (at most the ring size).
    in_use_descs: u32,
    /// Ids in the order they were popped, the last `size` of them (for
    /// [`Self::unpop`]).
    popped: VecDeque<u16>,
    /// Used descriptors written since the last notification decision.
    pending_signal: bool,
    /// Where the device's writes stood at the last decision, and how many ring
    /// descriptors it has used since.
    signalled_used: RingPosition,
    used_since_signal: u32,
    /// Whether `signalled_used` stands for a decision this ring made (a started ring
    /// does not know what the guest was last told: its first decision notifies, as
    /// the split ring's does).
    signalled_valid: bool,
    log: Option<Arc<DirtyLog>>,
}

impl PackedRing {
    /// Build from a setup; fails when the size, an alignment or an index is unusable.
    pub fn new(setup: PackedSetup) -> Result<Self, PackedRingError> {
        let size = setup.size;
        if size == 0 || size > MAX_PACKED_SIZE {
            return Err(PackedRingError::Size(size));
        }
        for (part, gpa, align, len) in [
            (
                "descriptor ring",
                setup.desc,
                DESC_SIZE,
                u64::from(size) * DESC_SIZE,
            ),
            (
                "driver event area",
                setup.driver_event,
                EVENT_SIZE,
                EVENT_SIZE,
            ),
            (
                "device event area",
                setup.device_event,
                EVENT_SIZE,
                EVENT_SIZE,
            ),
        ] {
            if gpa % align != 0 {
                return Err(PackedRingError::Misaligned { part, gpa, align });
            }
            // So that no address computed inside a part wraps.
            if gpa.checked_add(len).is_none() {
                return Err(PackedRingError::Wraps { part, gpa });
            }
        }
        for p in [setup.indices.avail, setup.indices.used] {
            if p.index >= size {
                return Err(PackedRingError::IndexBeyondRing {
                    index: p.index,
                    size,
                });
            }
        }
        Ok(PackedRing {
            size,
            desc: setup.desc,
            driver_event: setup.driver_event,
            device_event: setup.device_event,
            event_idx: setup.event_idx,
            kick: setup.kick,
            call: setup.call,
            walker: ChainWalker {
                desc_table: setup.desc,
                queue_size: size,
                indirect: setup.indirect,
            },
            health: RingHealth::default(),
            next_avail: setup.indices.avail,
            next_used: setup.indices.used,
            in_use: vec![0; usize::from(size)],
            start_of: vec![0; usize::from(size)],
            readable_only: vec![false; usize::from(size)],
            in_order: setup.in_order,
            batch: None,
            in_use_descs: 0,
            popped: VecDeque::new(),
            pending_signal: false,
            signalled_used: setup.indices.used,
            used_since_signal: 0,
            signalled_valid: false,
            log: setup.log,
        })
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The dirty log, while the frontend logs the backend's writes.
    pub fn log(&self) -> Option<&DirtyLog> {
        self.log.as_deref()
    }

    /// Where the ring stands (for handing it back to the control plane:
    /// [`PackedIndices::vring_base`]). An in-order batch not written yet is not
    /// counted (call [`Self::signal`] first, as the worker does after every batch).
    pub fn indices(&self) -> PackedIndices {
        PackedIndices {
            avail: self.next_avail,
            used: self.next_used,
        }
    }

    fn mark(&self, gpa: u64, len: u64) {
        if let Some(log) = &self.log {
            log.mark(gpa, len);
        }
    }

    /// Guest-physical address of descriptor `index` (below the size; the ring does
    /// not wrap the address space, [`Self::new`] checked).
    fn desc_addr(&self, index: u16) -> u64 {
        self.desc.wrapping_add(u64::from(index) * DESC_SIZE)
    }

    fn broken(&mut self, m: &QueueMetrics, why: &str) -> Option<u16> {
        self.health
            .break_now(m, &format!("packed virtqueue broken ({why})"));
        None
    }

    fn report_fault(&mut self, m: &QueueMetrics) {
        self.health.report(
            m,
            "packed virtqueue broken (a hostile chain or a ring outside guest memory)",
        );
    }

    /// The fault that stopped the ring, if any.
    pub fn fault(&self) -> Option<RingFault> {
        self.health.fault()
    }

    /// The flags of descriptor `index`, loaded with acquire ordering (the driver
    /// stores a chain's first flags last, with release); None when unreadable.
    fn load_flags(&self, map: &GuestPageMap, index: u16) -> Option<u16> {
        map.load_u16(self.desc_addr(index) + FLAGS_OFFSET, Ordering::Acquire)
    }

    /// Chains available to pop now (at least this many: counting stops at
    /// [`AVAILABLE_SCAN`], so a look costs a batch's worth of flag loads, not a
    /// ring's), counted from the flags of the ring's descriptors (a chain counts at
    /// its last descriptor). None, and the ring marked broken, when the ring or the
    /// event areas are not wholly in guest memory.
    pub fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16> {
        if self.health.is_broken() {
            self.report_fault(m);
            return None;
        }
        let ring_ok = map.contains(self.desc, u64::from(self.size) * DESC_SIZE)
            && map.contains(self.driver_event, EVENT_SIZE)
            && map.contains(self.device_event, EVENT_SIZE);
        if !ring_ok {
            return self.broken(m, "a ring part is outside guest memory");
        }
        let room = u32::from(self.size) - self.in_use_descs;
        let mut pos = self.next_avail;
        let mut seen = 0u32;
        let mut chains = 0u16;
        while seen < room && chains < AVAILABLE_SCAN {
            let Some(flags) = self.load_flags(map, pos.index) else {
                return self.broken(m, "a descriptor is unreadable");
            };
            if !is_avail(flags, pos.wrap) {
                break;
            }
            seen += 1;
            // A chain counts at its last descriptor: one cut short by the room or by
            // a descriptor not available is not counted (popping it breaks the ring).
            if flags & DESC_F_NEXT == 0 {
                chains += 1;
            }
            pos = pos.advance(1, self.size);
        }
        Some(chains)
    }

    /// Read one ring descriptor; None, and the ring broken, when unreadable.
    fn read_desc(&mut self, map: &GuestPageMap, index: u16) -> Option<PackedDesc> {
        match map.read_array::<16>(self.desc_addr(index)) {
            Some(raw) => Some(PackedDesc::decode(raw)),
            None => {
                self.health.break_later();
                None
            }
        }
    }

    /// Pop the next chain: its descriptors are read now, its buffers checked and put
    /// in `out` (cleared first). None when no chain is available, or when the chain
    /// breaks the ring (an id out of range or in use, a descriptor of the chain not
    /// available, a chain longer than the ring has room for, unreadable descriptors:
    /// counted at the next [`Self::available`] or [`Self::signal`]).
    pub fn pop_chain(&mut self, map: &GuestPageMap, out: &mut Segments) -> Option<PoppedChain> {
        out.clear();
        if self.health.is_broken() {
            return None;
        }
        let head = self.next_avail;
        let first_flags = self.load_flags(map, head.index);
        let Some(first_flags) = first_flags else {
            self.health.break_later();
            return None;
        };
        if !is_avail(first_flags, head.wrap) {
            return None;
        }
        let room = u32::from(self.size) - self.in_use_descs;
        let mut pos = head;
        let mut count = 0u16;
        let mut chain: Result<(), ChainError> = Ok(());
        let last = loop {
            if u32::from(count) >= room {
                // A loop round the ring, or descriptors still in use shown as
                // available again (a wrap counter that lies).
                self.health.break_later();
                return None;
            }
            let d = self.read_desc(map, pos.index)?;
            // The first descriptor's flags are the ones loaded with acquire.
            let flags = if count == 0 { first_flags } else { d.flags };
            if !is_avail(flags, pos.wrap) {
                // The driver made the chain available before all of it.
                self.health.break_later();
                return None;
            }
            count += 1;
            pos = pos.advance(1, self.size);
            let next = flags & DESC_F_NEXT != 0;
            if chain.is_ok() {
                chain = self.collect(map, &d, flags, count, out);
            }
            if !next {
                break d;
            }
        };
        let id = last.id;
        if id >= self.size || self.in_use[usize::from(id)] != 0 {
            self.health.break_later();
            return None;
        }
        self.in_use[usize::from(id)] = count;
        self.start_of[usize::from(id)] = head.index;
        self.readable_only[usize::from(id)] = chain.is_ok() && out.iter().all(|s| !s.write);
        self.in_use_descs += u32::from(count);
        self.next_avail = pos;
        self.popped.push_back(id);
        if self.popped.len() > usize::from(self.size) {
            self.popped.pop_front();
        }
        if chain.is_err() {
            out.clear();
        }
        Some(PoppedChain {
            id,
            chain,
            slots: count,
        })
    }

    /// Add the buffers of ring descriptor `d` (the `count`-th of its chain) to `out`.
    fn collect(
        &self,
        map: &GuestPageMap,
        d: &PackedDesc,
        flags: u16,
        count: u16,
        out: &mut Segments,
    ) -> Result<(), ChainError> {
        if flags & DESC_F_INDIRECT == 0 {
            out.push(ChainWalker::segment(
                d.addr,
                d.len,
                flags & DESC_F_WRITE != 0,
            )?);
            return Ok(());
        }
        // An indirect table is a chain's only descriptor (no NEXT, nothing before it).
        let (table, entries) =
            self.walker
                .indirect_table(d.addr, d.len, flags & DESC_F_NEXT != 0 || count > 1)?;
        for i in 0..entries {
            let at = table.wrapping_add(u64::from(i) * DESC_SIZE);
            let raw = map
                .read_array::<16>(at)
                .ok_or(ChainError::TableOutsideMemory(table))?;
            let e = PackedDesc::decode(raw);
            // Only WRITE counts in an indirect table; NEXT, INDIRECT and the id are
            // reserved and ignored.
            out.push(ChainWalker::segment(
                e.addr,
                e.len,
                e.flags & DESC_F_WRITE != 0,
            )?);
        }
        Ok(())
    }

    /// Give back the last `n` popped chains (they will be popped again); stops at a
    /// chain already returned (the caller may only give back chains it still holds).
    pub fn unpop(&mut self, n: u16) {
        for _ in 0..n {
            let Some(&id) = self.popped.back() else {
                return;
            };
            let count = self.in_use[usize::from(id)];
            if count == 0 {
                debug_assert!(false, "unpop of a chain already returned");
                return;
            }
            self.popped.pop_back();
            self.in_use[usize::from(id)] = 0;
            self.in_use_descs -= u32::from(count);
            self.next_avail = self.next_avail.back(count, self.size);
        }
    }

    /// Return chain `id` to the guest with `len` bytes written: the used descriptor
    /// is written at the next used position (`len`, `id`, then `flags` with a
    /// release store) and the position skips the chain's descriptors; with in-order
    /// batching a device-readable chain returned empty at the write position joins
    /// the batch instead. False for an id not in use (nothing to return) or a ring
    /// outside guest memory (the ring is then broken).
    pub fn add_used(&mut self, map: &GuestPageMap, id: u16, len: u32) -> bool {
        let i = usize::from(id);
        let count = match self.in_use.get(i) {
            Some(&c) if c > 0 => c,
            _ => return false,
        };
        if self.health.is_broken() {
            return false;
        }
        let batched = self.batch.map_or(0, |(_, n)| n);
        let joins = self.in_order
            && len == 0
            && self.readable_only[i]
            && self.start_of[i] == self.next_used.advance(batched, self.size).index;
        if joins {
            self.batch = Some((id, batched + count));
            self.in_use[i] = 0;
            self.pending_signal = true;
            return true;
        }
        if !self.flush_batch(map) || !self.write_used(map, id, len, count) {
            return false;
        }
        self.in_use[i] = 0;
        self.pending_signal = true;
        true
    }

    /// Write one used descriptor for `id` at the next used position and skip `count`
    /// descriptors; false (the ring broken) when the ring is not writable.
    fn write_used(&mut self, map: &GuestPageMap, id: u16, len: u32, count: u16) -> bool {
        let at = self.desc_addr(self.next_used.index);
        let mut len_id = [0u8; 6];
        len_id[..4].copy_from_slice(&len.to_le_bytes());
        len_id[4..].copy_from_slice(&id.to_le_bytes());
        let wrap = if self.next_used.wrap {
            DESC_F_AVAIL | DESC_F_USED
        } else {
            0
        };
        let flags = wrap | if len > 0 { DESC_F_WRITE } else { 0 };
        if !map.write_array(at + 8, len_id)
            || !map.store_u16(at + FLAGS_OFFSET, flags, Ordering::Release)
        {
            self.health.break_later();
            return false;
        }
        self.mark(at + 8, DESC_SIZE - 8);
        self.in_use_descs -= u32::from(count);
        self.next_used = self.next_used.advance(count, self.size);
        self.used_since_signal = self.used_since_signal.saturating_add(u32::from(count));
        true
    }

    /// Write the in-order batch's one used descriptor, if there is a batch.
    fn flush_batch(&mut self, map: &GuestPageMap) -> bool {
        match self.batch.take() {
            Some((id, count)) => self.write_used(map, id, 0, count),
            None => true,
        }
    }

    /// Whether the guest wants an interrupt for the used descriptors written since
    /// the last decision: the driver event suppression structure's mode.
    fn needs_notification(&mut self, map: &GuestPageMap) -> bool {
        // The used flags must be visible before we read the guest's wish.
        fence(Ordering::SeqCst);
        let old = std::mem::replace(&mut self.signalled_used, self.next_used);
        let span = std::mem::take(&mut self.used_since_signal);
        if !std::mem::replace(&mut self.signalled_valid, true) {
            return true;
        }
        let Some(raw) = map.read_array::<4>(self.driver_event) else {
            return true;
        };
        match EventMode::decode(raw, self.event_idx) {
            EventMode::Enable => true,
            EventMode::Disable => false,
            EventMode::Desc(event) => reached(event, old, span, self.size),
        }
    }

    /// Notify the guest of the used descriptors written since the last call, unless
    /// its event suppression structure says otherwise.
    pub fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics) {
        self.report_fault(m);
        if !std::mem::take(&mut self.pending_signal) {
            return;
        }
        if !self.flush_batch(map) {
            self.report_fault(m);
            return;
        }
        if !self.needs_notification(map) {
            m.notifications_suppressed.inc();
            return;
        }
        if let Some(call) = &self.call {
            if call.write(1).is_ok() {
                m.notifications.inc();
            }
        }
    }

    /// Write the device event suppression structure: `flags` (with EVENT_IDX and
    /// DESC, the event offset first).
    fn write_device_event(&mut self, map: &GuestPageMap, flags: u16) {
        let mut ok = true;
        if flags == EVENT_FLAGS_DESC {
            ok &= map.store_u16(self.device_event, self.next_avail.word(), Ordering::Relaxed);
        }
        ok &= map.store_u16(self.device_event + 2, flags, Ordering::Release);
        if ok {
            self.mark(self.device_event, EVENT_SIZE);
        } else {
            self.health.break_later();
        }
    }

    /// Ask the guest to kick us when it makes buffers available (with EVENT_IDX:
    /// when it reaches the next descriptor we will read); returns true when a chain
    /// arrived meanwhile (process again before sleeping).
    pub fn enable_notification(&mut self, map: &GuestPageMap) -> bool {
        if self.health.is_broken() {
            return false;
        }
        let flags = if self.event_idx {
            EVENT_FLAGS_DESC
        } else {
            EVENT_FLAGS_ENABLE
        };
        self.write_device_event(map, flags);
        // Our wish must be visible before we look at the ring again.
        fence(Ordering::SeqCst);
        self.load_flags(map, self.next_avail.index)
            .is_some_and(|f| is_avail(f, self.next_avail.wrap))
    }

    /// Tell the guest not to kick while we are draining.
    pub fn disable_notification(&mut self, map: &GuestPageMap) {
        if !self.health.is_broken() {
            self.write_device_event(map, EVENT_FLAGS_DISABLE);
        }
    }
}

#[cfg(test)]
mod tests;
