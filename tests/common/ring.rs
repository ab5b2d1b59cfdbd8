// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a split virtqueue, in guest memory.
//!
//! Layout (virtio 1.x, 2.7): descriptor table (16 bytes per entry), available ring
//! (`flags`, `idx`, `ring[size]`, `used_event`), used ring (`flags`, `idx`,
//! `ring[size]` of `{id: u32, len: u32}`, `avail_event`). Indices run freely and wrap at
//! 2^16; slots are `idx % size`.
//!
//! This file is the one way chains are built in this project's tests: the
//! integration tests' harness includes it (`tests/common`, over the memfd
//! `TestMemory`) and so do the library's unit tests (`src/datapath/test_guest.rs`,
//! over a `GuestPageMap`). It therefore depends on nothing but the guest memory it
//! is given: anything implementing [`RingMemory`].

use std::collections::HashMap;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vhost::VringConfigData;
use virtio_bindings::bindings::virtio_ring;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The guest memory a ring lives in.
pub trait RingMemory {
    /// The mapping the ring and its buffers are written and read through.
    fn mem(&self) -> &GuestMemoryMmap;

    /// Allocate `len` zeroed bytes aligned to `align` in region `region`.
    fn alloc(&self, region: usize, len: u64, align: u64) -> GuestAddress;
}

/// virtio-bindings has the ring flags as `u32`; the fields they go in are `u16`.
const fn flag(v: u32) -> u16 {
    let [lo, hi, b2, b3] = v.to_le_bytes();
    assert!(b2 == 0 && b3 == 0, "ring flag does not fit u16");
    u16::from_le_bytes([lo, hi])
}

/// Descriptor continues in `next`.
pub const VRING_DESC_F_NEXT: u16 = flag(virtio_ring::VRING_DESC_F_NEXT);
/// Buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = flag(virtio_ring::VRING_DESC_F_WRITE);
/// Buffer is an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = flag(virtio_ring::VRING_DESC_F_INDIRECT);
/// Driver: do not interrupt me (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = flag(virtio_ring::VRING_AVAIL_F_NO_INTERRUPT);
/// Device: do not kick me (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = flag(virtio_ring::VRING_USED_F_NO_NOTIFY);

fn write_bytes(mem: &impl RingMemory, gpa: u64, bytes: &[u8]) {
    mem.mem()
        .write_slice(bytes, GuestAddress(gpa))
        .expect("write guest memory");
}

fn read_bytes(mem: &impl RingMemory, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.mem()
        .read_slice(&mut v, GuestAddress(gpa))
        .expect("read guest memory");
    v
}

/// Our (the frontend's) virtual address of `gpa`: what SET_VRING_ADDR carries.
fn host_addr(mem: &impl RingMemory, gpa: GuestAddress) -> u64 {
    mem.mem()
        .get_host_address(gpa)
        .expect("address in guest memory") as u64
}

/// One descriptor as it is written in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor index (with NEXT).
    pub next: u16,
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn ro(addr: GuestAddress, len: usize) -> Self {
        Buf {
            addr: addr.0,
            len: u32::try_from(len).expect("buffer length fits u32"),
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn wo(addr: GuestAddress, len: usize) -> Self {
        Buf {
            write: true,
            ..Buf::ro(addr, len)
        }
    }
}

/// A chain the device gave back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub id: u16,
    /// Bytes the device wrote.
    pub len: u32,
    /// The buffers the chain was made of (as posted).
    pub bufs: Vec<Buf>,
}

struct InFlight {
    descs: Vec<u16>,
    bufs: Vec<Buf>,
}

/// `vring_need_event` of the virtio spec: whether moving an index from `old` to `new`
/// crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver's view of one split virtqueue.
pub struct SplitRing {
    size: u16,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    event_idx: bool,
    free: Vec<u16>,
    /// Next avail index to fill.
    avail_idx: Wrapping<u16>,
    /// Avail index last written to memory.
    published: Wrapping<u16>,
    /// Used entries consumed so far.
    last_used: Wrapping<u16>,
    in_flight: HashMap<u16, InFlight>,
}

impl SplitRing {
    /// Allocate a ring of `size` entries in `region`.
    pub fn new(mem: &impl RingMemory, region: usize, size: u16) -> Self {
        assert!(size.is_power_of_two(), "queue size must be a power of two");
        let n = u64::from(size);
        let desc_table = mem.alloc(region, 16 * n, 4096);
        let avail = mem.alloc(region, 6 + 2 * n, 4096);
        let used = mem.alloc(region, 6 + 8 * n, 4096);
        SplitRing {
            size,
            desc_table,
            avail,
            used,
            event_idx: false,
            free: (0..size).rev().collect(),
            avail_idx: Wrapping(0),
            published: Wrapping(0),
            last_used: Wrapping(0),
            in_flight: HashMap::new(),
        }
    }

    /// Follow EVENT_IDX (used_event / avail_event) rather than the flags.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether EVENT_IDX is followed.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of (descriptor table, avail ring, used ring).
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc_table, self.avail, self.used)
    }

    /// SET_VRING_ADDR payload: the rings as addresses in our (the frontend's) mapping.
    pub fn config_data(&self, mem: &impl RingMemory) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: host_addr(mem, self.desc_table),
            used_ring_addr: host_addr(mem, self.used),
            avail_ring_addr: host_addr(mem, self.avail),
            log_addr: None,
        }
    }

    /// Free descriptors left.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains posted and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn alloc_desc(&mut self) -> u16 {
        self.free
            .pop()
            .expect("descriptor table full: the test posted more than the queue size")
    }

    /// Write one descriptor at `index` of the table at `table`.
    pub fn write_desc(mem: &impl RingMemory, table: GuestAddress, index: u16, d: Desc) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        write_bytes(mem, table.0 + 16 * u64::from(index), &raw);
    }

    /// Read one descriptor at `index` of the table at `table`.
    pub fn read_desc(mem: &impl RingMemory, table: GuestAddress, index: u16) -> Desc {
        let raw = read_bytes(mem, table.0 + 16 * u64::from(index), 16);
        Desc {
            addr: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
            flags: u16::from_le_bytes([raw[12], raw[13]]),
            next: u16::from_le_bytes([raw[14], raw[15]]),
        }
    }

    fn flags_of(b: &Buf) -> u16 {
        if b.write {
            VRING_DESC_F_WRITE
        } else {
            0
        }
    }

    /// Put `head` in the next avail slot (not yet published).
    fn offer(&mut self, mem: &impl RingMemory, head: u16, descs: Vec<u16>, bufs: Vec<Buf>) {
        let slot = u64::from(self.avail_idx.0 % self.size);
        write_bytes(mem, self.avail.0 + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx += 1;
        let old = self.in_flight.insert(head, InFlight { descs, bufs });
        assert!(old.is_none(), "head {head} posted twice");
    }

    /// Add a chain of direct descriptors; returns its head. Call [`Self::publish`] after.
    pub fn add_chain(&mut self, mem: &impl RingMemory, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty(), "a chain has at least one buffer");
        let descs: Vec<u16> = bufs.iter().map(|_| self.alloc_desc()).collect();
        for (i, (b, &d)) in bufs.iter().zip(&descs).enumerate() {
            let next = descs.get(i + 1).copied();
            let flags = Self::flags_of(b) | if next.is_some() { VRING_DESC_F_NEXT } else { 0 };
            Self::write_desc(
                mem,
                self.desc_table,
                d,
                Desc {
                    addr: b.addr,
                    len: b.len,
                    flags,
                    next: next.unwrap_or(0),
                },
            );
        }
        let head = descs[0];
        self.offer(mem, head, descs, bufs.to_vec());
        head
    }

    /// Add a chain as one INDIRECT descriptor pointing at a table written at `table`
    /// (16 bytes per buffer, allocated by the caller).
    pub fn add_indirect(
        &mut self,
        mem: &impl RingMemory,
        table: GuestAddress,
        bufs: &[Buf],
    ) -> u16 {
        let n = u16::try_from(bufs.len()).expect("indirect table fits u16 entries");
        let entries: Vec<Desc> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                Desc {
                    addr: b.addr,
                    len: b.len,
                    flags: Self::flags_of(b) | if last { 0 } else { VRING_DESC_F_NEXT },
                    next: if last {
                        0
                    } else {
                        u16::try_from(i + 1).expect("fits u16")
                    },
                }
            })
            .collect();
        let head = self.add_indirect_raw(mem, table, &entries);
        assert_eq!(entries.len(), usize::from(n));
        self.in_flight.get_mut(&head).expect("just posted").bufs = bufs.to_vec();
        head
    }

    /// Add an INDIRECT descriptor whose table (written at `table`) holds `entries`
    /// verbatim: for hostile tables.
    pub fn add_indirect_raw(
        &mut self,
        mem: &impl RingMemory,
        table: GuestAddress,
        entries: &[Desc],
    ) -> u16 {
        for (i, e) in entries.iter().enumerate() {
            Self::write_desc(mem, table, u16::try_from(i).expect("fits u16"), *e);
        }
        let d = self.alloc_desc();
        Self::write_desc(
            mem,
            self.desc_table,
            d,
            Desc {
                addr: table.0,
                len: u32::try_from(16 * entries.len()).expect("fits u32"),
                flags: VRING_DESC_F_INDIRECT,
                next: 0,
            },
        );
        self.offer(mem, d, vec![d], Vec::new());
        d
    }

    /// Add a chain of raw descriptors in the main table. `next` fields (with NEXT set)
    /// are indices into `descs`, translated to the table slots allocated here, so loops
    /// and other hostile shapes can be expressed. Returns the head (`descs[0]`).
    pub fn add_raw(&mut self, mem: &impl RingMemory, descs: &[Desc]) -> u16 {
        let slots: Vec<u16> = descs.iter().map(|_| self.alloc_desc()).collect();
        for (d, &slot) in descs.iter().zip(&slots) {
            let next = if d.flags & VRING_DESC_F_NEXT != 0 {
                slots[usize::from(d.next)]
            } else {
                d.next
            };
            Self::write_desc(mem, self.desc_table, slot, Desc { next, ..*d });
        }
        let head = slots[0];
        self.offer(mem, head, slots, Vec::new());
        head
    }

    /// Make the chains added so far visible to the device. Returns whether the device
    /// asked to be kicked (avail_event with EVENT_IDX, the NO_NOTIFY flag without).
    pub fn publish(&mut self, mem: &impl RingMemory) -> bool {
        let old = self.published.0;
        let new = self.avail_idx.0;
        // The descriptors and ring slots must be visible before the index.
        fence(Ordering::SeqCst);
        mem.mem()
            .store(new, GuestAddress(self.avail.0 + 2), Ordering::Release)
            .expect("write avail idx");
        self.published = self.avail_idx;
        // The index must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            need_event(self.avail_event(mem), new, old)
        } else {
            self.used_flags(mem) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Start every index at `idx`, as if `idx` chains had already gone round (for
    /// wrap-around tests): the avail and used indices in memory are set too, so the
    /// device must start at `next_avail = next_used = idx`. Call before posting.
    pub fn start_at(&mut self, mem: &impl RingMemory, idx: u16) {
        assert!(
            self.in_flight.is_empty() && self.avail_idx == self.published,
            "start_at on a ring already in use"
        );
        self.avail_idx = Wrapping(idx);
        self.published = Wrapping(idx);
        self.last_used = Wrapping(idx);
        for at in [self.avail.0 + 2, self.used.0 + 2] {
            mem.mem()
                .store(idx, GuestAddress(at), Ordering::Release)
                .expect("write ring index");
        }
    }

    /// Write an arbitrary avail index (hostile: beyond what was posted).
    pub fn set_avail_idx_raw(&mut self, mem: &impl RingMemory, idx: u16) {
        fence(Ordering::SeqCst);
        mem.mem()
            .store(idx, GuestAddress(self.avail.0 + 2), Ordering::Release)
            .expect("write avail idx");
    }

    /// The avail index the driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.published.0
    }

    /// Set the avail ring flags.
    pub fn set_avail_flags(&self, mem: &impl RingMemory, flags: u16) {
        mem.mem()
            .store(flags, self.avail, Ordering::Release)
            .expect("write avail flags");
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &impl RingMemory) -> u16 {
        mem.mem()
            .load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
            .expect("read used idx")
    }

    /// The device's used ring flags.
    pub fn used_flags(&self, mem: &impl RingMemory) -> u16 {
        mem.mem()
            .load(self.used, Ordering::Acquire)
            .expect("read used flags")
    }

    /// `avail_event` (written by the device after the used ring).
    pub fn avail_event(&self, mem: &impl RingMemory) -> u16 {
        mem.mem()
            .load(
                GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size)),
                Ordering::Acquire,
            )
            .expect("read avail_event")
    }

    /// Set `used_event` (after the avail ring).
    pub fn set_used_event(&self, mem: &impl RingMemory, v: u16) {
        mem.mem()
            .store(
                v,
                GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size)),
                Ordering::Release,
            )
            .expect("write used_event");
        fence(Ordering::SeqCst);
    }

    /// Used entries consumed so far (the next one expected is at this index).
    pub fn last_used(&self) -> u16 {
        self.last_used.0
    }

    /// Whether the device has returned entries we have not consumed.
    pub fn has_used(&self, mem: &impl RingMemory) -> bool {
        self.used_idx(mem) != self.last_used.0
    }

    /// Consume every new used entry; their descriptors become free again. Panics (with
    /// `context` appended) on a device error: an unknown head, or more entries than
    /// were posted.
    pub fn take_used(&mut self, mem: &impl RingMemory, context: &dyn Fn() -> String) -> Vec<Used> {
        let idx = Wrapping(self.used_idx(mem));
        let pending = (idx - self.last_used).0;
        assert!(
            usize::from(pending) <= self.in_flight.len(),
            "device bug: used idx jumped by {pending} with only {} chains posted{}",
            self.in_flight.len(),
            context()
        );
        let mut out = Vec::with_capacity(usize::from(pending));
        while self.last_used != idx {
            let slot = u64::from(self.last_used.0 % self.size);
            let raw = read_bytes(mem, self.used.0 + 4 + 8 * slot, 8);
            let id32 = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(raw[4..8].try_into().expect("4 bytes"));
            let id = u16::try_from(id32).ok().filter(|id| *id < self.size);
            let Some(id) = id else {
                panic!(
                    "device bug: used id {id32} is not a descriptor index{}",
                    context()
                );
            };
            let Some(chain) = self.in_flight.remove(&id) else {
                panic!(
                    "device bug: used id {id} is not the head of a posted chain{}",
                    context()
                );
            };
            self.free.extend(chain.descs);
            out.push(Used {
                id,
                len,
                bufs: chain.bufs,
            });
            self.last_used += 1;
        }
        out
    }
}
