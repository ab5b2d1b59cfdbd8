// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a packed virtqueue, in a [`TestGuest`]: the integration tests'
//! packed driver (`tests/common/packed_ring.rs`, included here as [`driver`]) with
//! what the unit tests need around it: the [`PackedSetup`] a worker gets for the
//! ring, positions as the ring layer's [`RingPosition`], used descriptors as
//! [`PUsed`].

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring::packed::event::RingPosition;
use super::ring::packed::{PackedIndices, PackedSetup};
use super::test_guest::driver::{self as split_driver, Buf, RingMemory};
use super::test_guest::TestGuest;

/// The shared driver refers to the split one as `super::ring`.
mod ring {
    pub(crate) use super::split_driver::{Buf, RingMemory, Used};
}

#[allow(dead_code)] // the integration tests use parts of it the unit tests do not
#[path = "../../tests/common/packed_ring.rs"]
pub(crate) mod driver;

pub(crate) use driver::{avail_bits, PackedDesc as PDesc};
use driver::{PackedRing, Position};

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

fn position(p: Position) -> RingPosition {
    RingPosition {
        index: p.index,
        wrap: p.wrap,
    }
}

/// The driver of one packed ring.
pub(crate) struct PackedDriver {
    ring: PackedRing,
    size: u16,
    in_order: bool,
}

impl PackedDriver {
    /// A zeroed ring of `size` descriptors and both event areas in region `region`.
    pub(crate) fn new(g: &TestGuest, region: usize, size: u16) -> Self {
        PackedDriver {
            ring: PackedRing::new(g, region, size),
            size,
            in_order: false,
        }
    }

    /// Guest-physical address of the descriptor ring.
    pub(crate) fn desc_addr(&self) -> GuestAddress {
        self.ring.areas().0
    }

    /// The setup a worker gets for this ring: indices where the driver stands, fresh
    /// eventfds, no EVENT_IDX, no indirect descriptors.
    pub(crate) fn setup(&self) -> PackedSetup {
        let (desc, driver_event, device_event) = self.ring.areas();
        PackedSetup {
            size: self.size,
            desc: desc.0,
            driver_event: driver_event.0,
            device_event: device_event.0,
            indices: PackedIndices {
                avail: self.next_avail(),
                used: self.next_used(),
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
        self.ring.set_in_order(on);
    }

    /// Where the driver will make the next descriptor available.
    pub(crate) fn next_avail(&self) -> RingPosition {
        position(self.ring.next_avail())
    }

    /// Where the driver will look for the next used descriptor.
    pub(crate) fn next_used(&self) -> RingPosition {
        position(self.ring.next_used())
    }

    /// The descriptor at `index` as it is in the ring now.
    pub(crate) fn read_desc(&self, g: &TestGuest, index: u16) -> PDesc {
        self.ring.read_desc(g, index)
    }

    /// Make one chain available (each buffer a descriptor); returns its id.
    pub(crate) fn add_chain(&mut self, g: &TestGuest, bufs: &[Buf]) -> u16 {
        self.ring.add_chain(g, bufs)
    }

    /// Make one chain available as an indirect table of `bufs` (in region 1, flags of
    /// the table's entries OR-ed with `extra`); returns its id.
    pub(crate) fn add_indirect(&mut self, g: &TestGuest, bufs: &[Buf], extra: u16) -> u16 {
        let table = g.alloc(1, 16 * u64::try_from(bufs.len()).expect("fits"), 16);
        self.ring.add_indirect_with(g, table, bufs, extra)
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
        self.ring.add_indirect_raw(g, table, len, extra)
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
        self.ring
            .add_raw(g, descs, mark)
            .into_iter()
            .map(position)
            .collect()
    }

    /// Record that `id` is in flight with `n` descriptors (after [`Self::add_raw`]).
    pub(crate) fn track(&mut self, id: u16, n: u16) {
        self.ring.track(id, n);
    }

    /// Take the used descriptors the device has written since the last call.
    pub(crate) fn take_used(&mut self, g: &TestGuest) -> Vec<PUsed> {
        self.ring
            .take_used_flags(g, &String::new)
            .into_iter()
            .map(|u| PUsed {
                id: u.used.id,
                len: u.used.len,
                written: u.written,
            })
            .collect()
    }

    /// Write the driver event suppression structure.
    pub(crate) fn set_driver_event(&self, g: &TestGuest, off_wrap: u16, flags: u16) {
        self.ring.set_driver_event(g, off_wrap, flags);
    }

    /// The device event suppression structure as (off_wrap, flags).
    pub(crate) fn device_event(&self, g: &TestGuest) -> (u16, u16) {
        self.ring.device_event(g)
    }
}
