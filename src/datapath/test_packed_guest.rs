// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a packed virtqueue, in a [`TestGuest`].
//!
//! [`PackedDriver`] does what a guest's driver does (virtio 1.2, 2.8.21): it writes a
//! chain's descriptors in ring order, each with the AVAIL bit equal to its wrap
//! counter and USED the inverse, the buffer id in the last one, and stores the first
//! descriptor's flags last; it reads used descriptors at its used position and skips
//! the number of descriptors the id's chain had. [`PackedDriver::add_raw`] writes
//! whatever a hostile test wants.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring::packed::event::RingPosition;
use super::ring::packed::{
    PackedIndices, PackedSetup, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_USED,
    DESC_F_WRITE,
};
use super::test_guest::driver::{Buf, RingMemory};
use super::test_guest::TestGuest;

/// One descriptor as written in the ring or an indirect table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PDesc {
    /// Guest-physical address.
    pub(crate) addr: u64,
    /// Length.
    pub(crate) len: u32,
    /// Buffer id.
    pub(crate) id: u16,
    /// Flags (with [`PackedDriver::add_raw`], exactly as given).
    pub(crate) flags: u16,
}

impl PDesc {
    /// The 16 bytes of the descriptor.
    pub(crate) fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.id.to_le_bytes());
        b[14..].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A used descriptor the driver read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PUsed {
    /// Buffer id.
    pub(crate) id: u16,
    /// Length written.
    pub(crate) len: u32,
    /// The WRITE flag of the used descriptor.
    pub(crate) written: bool,
}

/// The AVAIL and USED bits that make a descriptor available with wrap counter `wrap`.
pub(crate) fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

/// The driver of one packed ring.
pub(crate) struct PackedDriver {
    size: u16,
    desc: GuestAddress,
    driver_event: GuestAddress,
    device_event: GuestAddress,
    next_avail: RingPosition,
    next_used: RingPosition,
    free_ids: VecDeque<u16>,
    /// Ring descriptors of each id in flight.
    in_flight: HashMap<u16, u16>,
    /// Ids in flight in the order they were made available (kept with `in_order`).
    order: VecDeque<u16>,
    /// VIRTIO_F_IN_ORDER: a used id means every id before it is used too.
    in_order: bool,
}

impl PackedDriver {
    /// A zeroed ring of `size` descriptors and both event areas in region `region`.
    pub(crate) fn new(g: &TestGuest, region: usize, size: u16) -> Self {
        let desc = g.alloc(region, 16 * u64::from(size), 16);
        let driver_event = g.alloc(region, 4, 4);
        let device_event = g.alloc(region, 4, 4);
        PackedDriver {
            size,
            desc,
            driver_event,
            device_event,
            next_avail: RingPosition::START,
            next_used: RingPosition::START,
            free_ids: (0..size).collect(),
            in_flight: HashMap::new(),
            order: VecDeque::new(),
            in_order: false,
        }
    }

    /// Guest-physical address of the descriptor ring.
    pub(crate) fn desc_addr(&self) -> GuestAddress {
        self.desc
    }

    /// The setup a worker gets for this ring: indices where the driver stands, fresh
    /// eventfds, no EVENT_IDX, no indirect descriptors.
    pub(crate) fn setup(&self) -> PackedSetup {
        PackedSetup {
            size: self.size,
            desc: self.desc.0,
            driver_event: self.driver_event.0,
            device_event: self.device_event.0,
            indices: PackedIndices {
                avail: self.next_avail,
                used: self.next_used,
            },
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: Some(EventFd::new(EFD_NONBLOCK).expect("call eventfd")),
            event_idx: false,
            indirect: false,
            in_order: self.in_order,
            log: None,
        }
    }

    /// Negotiate VIRTIO_F_IN_ORDER (before [`Self::setup`]).
    pub(crate) fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// Where the driver will make the next descriptor available.
    pub(crate) fn next_avail(&self) -> RingPosition {
        self.next_avail
    }

    /// Where the driver will look for the next used descriptor.
    pub(crate) fn next_used(&self) -> RingPosition {
        self.next_used
    }

    fn write_desc(&self, g: &TestGuest, index: u16, d: PDesc) {
        g.write(
            GuestAddress(self.desc.0 + 16 * u64::from(index)),
            &d.bytes(),
        );
    }

    /// The descriptor at `index` as it is in the ring now.
    pub(crate) fn read_desc(&self, g: &TestGuest, index: u16) -> PDesc {
        let b = g.read(GuestAddress(self.desc.0 + 16 * u64::from(index)), 16);
        PDesc {
            addr: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Write `descs` at the next positions, the first one's flags last; `flags` of
    /// each exactly as given but for the AVAIL/USED bits, which are set for its
    /// position when `mark` is true. Returns the positions written.
    fn put(&mut self, g: &TestGuest, descs: &[PDesc], mark: bool) -> Vec<RingPosition> {
        let mut at = Vec::new();
        let mut first = None;
        for (i, d) in descs.iter().enumerate() {
            let pos = self.next_avail;
            let mut d = *d;
            if mark {
                d.flags = (d.flags & !(DESC_F_AVAIL | DESC_F_USED)) | avail_bits(pos.wrap);
            }
            if i == 0 {
                // Everything but the flags now, the flags once the rest is written.
                first = Some((pos.index, d));
                let old = self.read_desc(g, pos.index).flags;
                self.write_desc(g, pos.index, PDesc { flags: old, ..d });
            } else {
                self.write_desc(g, pos.index, d);
            }
            at.push(pos);
            self.next_avail = pos.advance(1, self.size);
        }
        if let Some((index, d)) = first {
            fence(Ordering::Release);
            self.write_desc(g, index, d);
        }
        at
    }

    /// Descriptors the driver may write now: the ring less those made available and
    /// not yet seen used.
    pub(crate) fn room(&self) -> u16 {
        let lap = 2 * u32::from(self.size);
        let at =
            |p: RingPosition| u32::from(p.index) + if p.wrap { 0 } else { u32::from(self.size) };
        let taken = (at(self.next_avail) + lap - at(self.next_used)) % lap;
        self.size - u16::try_from(taken).expect("below the size")
    }

    /// Make one chain available (each buffer a descriptor); returns its id.
    pub(crate) fn add_chain(&mut self, g: &TestGuest, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty(), "a chain has a buffer");
        assert!(
            bufs.len() <= usize::from(self.room()),
            "no room in the ring"
        );
        let id = self.free_ids.pop_front().expect("a free buffer id");
        let n = bufs.len();
        let descs: Vec<PDesc> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| PDesc {
                addr: b.addr,
                len: b.len,
                // Only the last descriptor's id counts; the others carry a decoy.
                id: if i + 1 == n { id } else { id ^ 0x5a5a },
                flags: if b.write { DESC_F_WRITE } else { 0 }
                    | if i + 1 < n { DESC_F_NEXT } else { 0 },
            })
            .collect();
        self.put(g, &descs, true);
        self.note_in_flight(id, u16::try_from(n).expect("chain fits u16"));
        id
    }

    /// Make one chain available as an indirect table of `bufs` (in region 1, flags of
    /// the table's entries OR-ed with `extra`); returns its id.
    pub(crate) fn add_indirect(&mut self, g: &TestGuest, bufs: &[Buf], extra: u16) -> u16 {
        let table = g.alloc(1, 16 * u64::try_from(bufs.len()).expect("fits"), 16);
        for (i, b) in bufs.iter().enumerate() {
            let d = PDesc {
                addr: b.addr,
                len: b.len,
                id: 0xdead,
                flags: extra | if b.write { DESC_F_WRITE } else { 0 },
            };
            g.write(
                GuestAddress(table.0 + 16 * u64::try_from(i).expect("fits")),
                &d.bytes(),
            );
        }
        let len = u32::try_from(16 * bufs.len()).expect("fits");
        self.add_indirect_raw(g, table.0, len, 0)
    }

    /// One ring descriptor with INDIRECT (and `extra` flags) naming `table`+`len`;
    /// returns its id.
    pub(crate) fn add_indirect_raw(
        &mut self,
        g: &TestGuest,
        table: u64,
        len: u32,
        extra: u16,
    ) -> u16 {
        let id = self.free_ids.pop_front().expect("a free buffer id");
        assert!(self.room() > 0, "no room in the ring");
        self.put(
            g,
            &[PDesc {
                addr: table,
                len,
                id,
                flags: DESC_F_INDIRECT | extra,
            }],
            true,
        );
        self.note_in_flight(id, 1);
        id
    }

    /// Write `descs` as they are at the next positions (AVAIL/USED bits set for each
    /// position when `mark`; the first's flags stored last); the driver's bookkeeping
    /// of ids is left alone. Returns the positions written.
    pub(crate) fn add_raw(
        &mut self,
        g: &TestGuest,
        descs: &[PDesc],
        mark: bool,
    ) -> Vec<RingPosition> {
        self.put(g, descs, mark)
    }

    /// Record that `id` is in flight with `n` descriptors (after [`Self::add_raw`]).
    pub(crate) fn track(&mut self, id: u16, n: u16) {
        self.free_ids.retain(|&f| f != id);
        self.note_in_flight(id, n);
    }

    fn note_in_flight(&mut self, id: u16, n: u16) {
        self.in_flight.insert(id, n);
        if self.in_order {
            self.order.push_back(id);
        }
    }

    /// Take the used descriptors the device has written since the last call.
    pub(crate) fn take_used(&mut self, g: &TestGuest) -> Vec<PUsed> {
        let mut out = Vec::new();
        loop {
            let d = self.read_desc(g, self.next_used.index);
            let used = d.flags & DESC_F_USED != 0;
            let avail = d.flags & DESC_F_AVAIL != 0;
            if used != self.next_used.wrap || avail != self.next_used.wrap {
                return out;
            }
            fence(Ordering::Acquire);
            assert!(
                self.in_flight.contains_key(&d.id),
                "device used id {} not in flight",
                d.id
            );
            // In order, the ids before this one are used too (their length is the
            // whole buffer; the device only batches read-only ones, length 0).
            let ids: Vec<u16> = if self.in_order {
                let upto = self
                    .order
                    .iter()
                    .position(|&i| i == d.id)
                    .expect("in order");
                self.order.drain(..=upto).collect()
            } else {
                vec![d.id]
            };
            for id in ids {
                let n = self.in_flight.remove(&id).expect("in flight");
                self.free_ids.push_back(id);
                self.next_used = self.next_used.advance(n, self.size);
                let last = id == d.id;
                out.push(PUsed {
                    id,
                    len: if last { d.len } else { 0 },
                    written: last && d.flags & DESC_F_WRITE != 0,
                });
            }
        }
    }

    /// Write the driver event suppression structure.
    pub(crate) fn set_driver_event(&self, g: &TestGuest, off_wrap: u16, flags: u16) {
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&off_wrap.to_le_bytes());
        b[2..].copy_from_slice(&flags.to_le_bytes());
        g.write(self.driver_event, &b);
    }

    /// The device event suppression structure as (off_wrap, flags).
    pub(crate) fn device_event(&self, g: &TestGuest) -> (u16, u16) {
        let b = g.read(self.device_event, 4);
        (
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        )
    }
}
