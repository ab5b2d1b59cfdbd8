// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a packed virtqueue (VIRTIO_F_RING_PACKED), in guest memory, for
//! the harness's packed layout ([`super::guest::GuestConfig::packed`]).
//!
//! Layout (virtio 1.2, 2.8): one ring of 16-byte descriptors (`addr`, `len`, `id`,
//! `flags`) and two 4-byte event suppression structures, the driver's and the
//! device's; vhost-user's SET_VRING_ADDR names them as the split ring's descriptor
//! table, avail ring and used ring. A chain is written in ring order with the AVAIL
//! bit equal to the driver's wrap counter and USED the inverse, its buffer id in the
//! last descriptor, the first descriptor's flags stored last (so a chain is available
//! the moment it is added: [`PackedRing::publish`] only says whether to kick). Used
//! descriptors are read at the driver's used position, which then skips the chain's
//! descriptors. Like [`super::ring`], it needs nothing but a [`RingMemory`], and it is
//! the one packed driver of the project's tests: the library's unit tests include it
//! too (`src/datapath/test_packed_guest.rs`, over a `GuestPageMap`). With
//! VIRTIO_F_IN_ORDER ([`PackedRing::set_in_order`]) a used id stands for every id made
//! available before it as well; [`PackedRing::add_raw`] writes whatever a hostile test
//! wants.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};

use vhost::VringConfigData;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::ring::{Buf, RingMemory, Used};

/// The buffer continues in the next descriptor.
pub const DESC_F_NEXT: u16 = 1;
/// Device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// An indirect table.
pub const DESC_F_INDIRECT: u16 = 4;
/// The AVAIL bit.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// The USED bit.
pub const DESC_F_USED: u16 = 1 << 15;
/// Event suppression: notify.
pub const EVENT_ENABLE: u16 = 0;
/// Event suppression: do not notify.
pub const EVENT_DISABLE: u16 = 1;

/// One descriptor as written in the ring or an indirect table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedDesc {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// Flags (with [`PackedRing::add_raw`], exactly as given).
    pub flags: u16,
}

impl PackedDesc {
    /// The 16 bytes of the descriptor.
    pub fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.id.to_le_bytes());
        b[14..].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A ring index and the wrap counter that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Index in the ring.
    pub index: u16,
    /// Wrap counter.
    pub wrap: bool,
}

impl Position {
    /// Where both sides start.
    pub const START: Position = Position {
        index: 0,
        wrap: true,
    };

    /// `n` descriptors further in a ring of `size`, the wrap counter flipped at the end.
    pub fn advance(self, n: u16, size: u16) -> Position {
        let i = u32::from(self.index) + u32::from(n);
        if i >= u32::from(size) {
            Position {
                index: u16::try_from(i - u32::from(size)).expect("below the size"),
                wrap: !self.wrap,
            }
        } else {
            Position {
                index: u16::try_from(i).expect("below the size"),
                wrap: self.wrap,
            }
        }
    }

    /// The vhost-user word form: the index with the wrap counter in bit 15.
    pub fn word(self) -> u16 {
        self.index | if self.wrap { 1 << 15 } else { 0 }
    }
}

/// The AVAIL and USED bits that make a descriptor available with wrap counter `wrap`.
pub fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

struct InFlight {
    descs: u16,
    bufs: Vec<Buf>,
}

/// A used descriptor the driver took: the chain, and whether the device set WRITE.
#[derive(Clone, Debug)]
pub struct PackedUsed {
    /// Buffer id, length written and the chain's buffers.
    pub used: Used,
    /// The WRITE flag of the used descriptor (with IN_ORDER, of the last id only).
    pub written: bool,
}

/// The driver's view of one packed virtqueue.
pub struct PackedRing {
    size: u16,
    desc: GuestAddress,
    driver_event: GuestAddress,
    device_event: GuestAddress,
    event_idx: bool,
    next_avail: Position,
    next_used: Position,
    free_ids: VecDeque<u16>,
    in_flight: HashMap<u16, InFlight>,
    /// Ids in flight in the order they were made available (kept with `in_order`).
    order: VecDeque<u16>,
    /// VIRTIO_F_IN_ORDER: a used id means every id before it is used too.
    in_order: bool,
}

impl PackedRing {
    /// Allocate a ring of `size` descriptors and both event structures in `region`.
    pub fn new(mem: &impl RingMemory, region: usize, size: u16) -> Self {
        let desc = mem.alloc(region, 16 * u64::from(size), 16);
        let driver_event = mem.alloc(region, 4, 4);
        let device_event = mem.alloc(region, 4, 4);
        PackedRing {
            size,
            desc,
            driver_event,
            device_event,
            event_idx: false,
            next_avail: Position::START,
            next_used: Position::START,
            free_ids: (0..size).collect(),
            in_flight: HashMap::new(),
            order: VecDeque::new(),
            in_order: false,
        }
    }

    /// Negotiate VIRTIO_F_IN_ORDER.
    pub fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// Guest-physical addresses of the descriptor ring, the driver event structure and
    /// the device event structure.
    pub fn areas(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.driver_event, self.device_event)
    }

    /// Follow EVENT_IDX (recorded; this driver always asks for every notification).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// SET_VRING_ADDR payload: descriptor ring, driver event structure (as the avail
    /// ring), device event structure (as the used ring), in our mapping.
    pub fn config_data(&self, mem: &impl RingMemory) -> VringConfigData {
        let host = |gpa: GuestAddress| {
            mem.mem()
                .get_host_address(gpa)
                .expect("address in guest memory") as u64
        };
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: host(self.desc),
            used_ring_addr: host(self.device_event),
            avail_ring_addr: host(self.driver_event),
            log_addr: None,
        }
    }

    /// The SET_VRING_BASE payload a frontend replays for this ring after its backend
    /// went away (as QEMU restores a packed ring's avail position from its used one):
    /// both positions at the driver's next used descriptor, avail in bits 0-15 and
    /// used in bits 16-31, each with its wrap counter in its bit 15. The chains still
    /// in flight are then taken again.
    pub fn vring_base(&self) -> u32 {
        u32::from(self.next_used.word()) | u32::from(self.next_used.word()) << 16
    }

    /// Where the driver makes the next descriptor available.
    pub fn next_avail(&self) -> Position {
        self.next_avail
    }

    /// Where the driver expects the next used descriptor.
    pub fn next_used(&self) -> Position {
        self.next_used
    }

    /// Chains made available and not used yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + 16 * u64::from(index))
    }

    /// The descriptor at `index` as it is in the ring now.
    pub fn read_desc(&self, mem: &impl RingMemory, index: u16) -> PackedDesc {
        let mut b = [0u8; 16];
        mem.mem()
            .read_slice(&mut b, self.desc_addr(index))
            .expect("read descriptor");
        PackedDesc {
            addr: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Descriptors the driver may write now: the ring less those made available (raw
    /// ones too) and not yet seen used.
    pub fn room(&self) -> u16 {
        let lap = 2 * u32::from(self.size);
        let at = |p: Position| u32::from(p.index) + if p.wrap { 0 } else { u32::from(self.size) };
        let taken = (at(self.next_avail) + lap - at(self.next_used)) % lap;
        self.size - u16::try_from(taken).expect("below the size")
    }

    /// Write `descs` at the next positions (AVAIL/USED set for each position when
    /// `mark`), the first one's flags last, with a release fence before it. Returns
    /// the positions written.
    fn put(&mut self, mem: &impl RingMemory, descs: &[PackedDesc], mark: bool) -> Vec<Position> {
        let mut at = self.next_avail;
        let mut first = None;
        let mut written = Vec::with_capacity(descs.len());
        for (i, d) in descs.iter().enumerate() {
            written.push(at);
            let mut d = *d;
            if mark {
                d.flags = (d.flags & !(DESC_F_AVAIL | DESC_F_USED)) | avail_bits(at.wrap);
            }
            let b = d.bytes();
            if i == 0 {
                mem.mem()
                    .write_slice(&b[..14], self.desc_addr(at.index))
                    .expect("write descriptor");
                first = Some((at.index, d.flags));
            } else {
                mem.mem()
                    .write_slice(&b, self.desc_addr(at.index))
                    .expect("write descriptor");
            }
            at = at.advance(1, self.size);
        }
        if let Some((index, flags)) = first {
            fence(Ordering::Release);
            mem.mem()
                .write_obj(flags, GuestAddress(self.desc_addr(index).0 + 14))
                .expect("write flags");
        }
        self.next_avail = at;
        written
    }

    fn note_in_flight(&mut self, id: u16, descs: u16, bufs: &[Buf]) {
        self.in_flight.insert(
            id,
            InFlight {
                descs,
                bufs: bufs.to_vec(),
            },
        );
        if self.in_order {
            self.order.push_back(id);
        }
    }

    /// Make one chain available (a descriptor per buffer); returns its id.
    pub fn add_chain(&mut self, mem: &impl RingMemory, bufs: &[Buf]) -> u16 {
        let n = u16::try_from(bufs.len()).expect("chain fits u16");
        assert!(n > 0 && n <= self.room(), "no room in the packed ring");
        let id = self.free_ids.pop_front().expect("a free buffer id");
        let descs: Vec<PackedDesc> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| PackedDesc {
                addr: b.addr,
                len: b.len,
                // Only the last descriptor's id counts; the others carry a decoy.
                id: if i + 1 == bufs.len() { id } else { id ^ 0x5a5a },
                flags: if b.write { DESC_F_WRITE } else { 0 }
                    | if i + 1 < bufs.len() { DESC_F_NEXT } else { 0 },
            })
            .collect();
        self.put(mem, &descs, true);
        self.note_in_flight(id, n, bufs);
        id
    }

    /// Make one chain available as an indirect table at `table` (room for
    /// `bufs.len()` descriptors); returns its id.
    pub fn add_indirect(
        &mut self,
        mem: &impl RingMemory,
        table: GuestAddress,
        bufs: &[Buf],
    ) -> u16 {
        self.add_indirect_with(mem, table, bufs, 0)
    }

    /// [`Self::add_indirect`] with `extra` OR-ed into the flags of the table's entries.
    pub fn add_indirect_with(
        &mut self,
        mem: &impl RingMemory,
        table: GuestAddress,
        bufs: &[Buf],
        extra: u16,
    ) -> u16 {
        assert!(self.room() > 0, "no room in the packed ring");
        for (i, b) in bufs.iter().enumerate() {
            let d = PackedDesc {
                addr: b.addr,
                len: b.len,
                id: 0xdead,
                flags: extra | if b.write { DESC_F_WRITE } else { 0 },
            };
            mem.mem()
                .write_slice(
                    &d.bytes(),
                    GuestAddress(table.0 + 16 * u64::try_from(i).expect("fits")),
                )
                .expect("write indirect table");
        }
        let len = u32::try_from(16 * bufs.len()).expect("fits");
        let id = self.add_indirect_raw(mem, table.0, len, 0);
        if let Some(f) = self.in_flight.get_mut(&id) {
            f.bufs = bufs.to_vec();
        }
        id
    }

    /// One ring descriptor with INDIRECT (and `extra` flags) naming `table`+`len`,
    /// whatever is there; returns its id.
    pub fn add_indirect_raw(
        &mut self,
        mem: &impl RingMemory,
        table: u64,
        len: u32,
        extra: u16,
    ) -> u16 {
        assert!(self.room() > 0, "no room in the packed ring");
        let id = self.free_ids.pop_front().expect("a free buffer id");
        self.put(
            mem,
            &[PackedDesc {
                addr: table,
                len,
                id,
                flags: DESC_F_INDIRECT | extra,
            }],
            true,
        );
        self.note_in_flight(id, 1, &[]);
        id
    }

    /// Write `descs` as they are (AVAIL/USED bits set for their positions when
    /// `mark`), tracking nothing: for hostile rings. Returns the positions written.
    pub fn add_raw(
        &mut self,
        mem: &impl RingMemory,
        descs: &[PackedDesc],
        mark: bool,
    ) -> Vec<Position> {
        self.put(mem, descs, mark)
    }

    /// Record that `id` is in flight with `n` descriptors (after [`Self::add_raw`]).
    pub fn track(&mut self, id: u16, n: u16) {
        self.free_ids.retain(|&f| f != id);
        self.note_in_flight(id, n, &[]);
    }

    /// Write the driver event suppression structure.
    pub fn set_driver_event(&self, mem: &impl RingMemory, off_wrap: u16, flags: u16) {
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&off_wrap.to_le_bytes());
        b[2..].copy_from_slice(&flags.to_le_bytes());
        mem.mem()
            .write_slice(&b, self.driver_event)
            .expect("write driver event");
    }

    /// The device event suppression structure as (off_wrap, flags).
    pub fn device_event(&self, mem: &impl RingMemory) -> (u16, u16) {
        let mut b = [0u8; 4];
        mem.mem()
            .read_slice(&mut b, self.device_event)
            .expect("read device event");
        (
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        )
    }

    /// Whether the device wants a kick now (its event suppression structure; with
    /// DESC the driver kicks anyway).
    pub fn publish(&mut self, mem: &impl RingMemory) -> bool {
        fence(Ordering::SeqCst);
        let flags: u16 = mem
            .mem()
            .read_obj(GuestAddress(self.device_event.0 + 2))
            .expect("read device event");
        flags != EVENT_DISABLE
    }

    /// Ask for a notification at every used descriptor (the driver event structure
    /// set to ENABLE).
    pub fn enable_calls(&self, mem: &impl RingMemory) {
        mem.mem()
            .write_slice(&[0, 0, 0, 0], self.driver_event)
            .expect("write driver event");
        fence(Ordering::SeqCst);
    }

    fn used_at(&self, mem: &impl RingMemory) -> Option<(u16, u32, u16)> {
        let a = self.desc_addr(self.next_used.index);
        let flags: u16 = mem
            .mem()
            .read_obj(GuestAddress(a.0 + 14))
            .expect("read flags");
        let used = flags & DESC_F_USED != 0;
        let avail = flags & DESC_F_AVAIL != 0;
        if used != self.next_used.wrap || avail != self.next_used.wrap {
            return None;
        }
        fence(Ordering::Acquire);
        let len: u32 = mem.mem().read_obj(GuestAddress(a.0 + 8)).expect("read len");
        let id: u16 = mem.mem().read_obj(GuestAddress(a.0 + 12)).expect("read id");
        Some((id, len, flags))
    }

    /// Whether a used descriptor waits at the driver's used position.
    pub fn has_used(&self, mem: &impl RingMemory) -> bool {
        self.used_at(mem).is_some()
    }

    /// Take the used descriptors the device has written since the last call.
    pub fn take_used(&mut self, mem: &impl RingMemory, context: &dyn Fn() -> String) -> Vec<Used> {
        self.take_used_flags(mem, context)
            .into_iter()
            .map(|u| u.used)
            .collect()
    }

    /// [`Self::take_used`] with each used descriptor's WRITE flag. With IN_ORDER the
    /// ids before a used one come back too (length 0: the device batches only
    /// chains it returns empty).
    pub fn take_used_flags(
        &mut self,
        mem: &impl RingMemory,
        context: &dyn Fn() -> String,
    ) -> Vec<PackedUsed> {
        let mut out = Vec::new();
        while let Some((id, len, flags)) = self.used_at(mem) {
            if !self.in_flight.contains_key(&id) {
                panic!(
                    "device used buffer id {id}, which is not in flight{}",
                    context()
                );
            }
            let ids: Vec<u16> = if self.in_order {
                let upto = self
                    .order
                    .iter()
                    .position(|&i| i == id)
                    .expect("an id in flight is in the order");
                self.order.drain(..=upto).collect()
            } else {
                vec![id]
            };
            for i in ids {
                let f = self.in_flight.remove(&i).expect("in flight");
                self.next_used = self.next_used.advance(f.descs, self.size);
                self.free_ids.push_back(i);
                let last = i == id;
                out.push(PackedUsed {
                    used: Used {
                        id: i,
                        len: if last { len } else { 0 },
                        bufs: f.bufs,
                    },
                    written: last && flags & DESC_F_WRITE != 0,
                });
            }
        }
        out
    }
}
