// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The one interface TX and RX drive a virtqueue through, whatever its layout.
//!
//! Both [`Ring`] (split) and [`PackedRing`] implement [`Virtqueue`]. The split ring's
//! methods map onto it one to one but for popping: `pop_head` followed by
//! `walker.walk` becomes [`Virtqueue::pop_chain`], because a packed chain must be
//! read when it is popped. The wiring step replaces, in TX and RX,
//!
//! | today (split `Ring`)                      | through the trait                         |
//! |-------------------------------------------|-------------------------------------------|
//! | `available(map, m)`                       | `available(map, m)`                       |
//! | `pop_head(map)` then `walker.walk(..)`    | `pop_chain(map, &mut segs)`: id + result  |
//! | `unpop(n)`                                | `unpop(n)`                                |
//! | `add_used(map, head, len)`                | `add_used(map, id, len)`                  |
//! | `signal(map, m)`                          | `signal(map, m)`                          |
//! | `enable_notification(map.mem())`          | `enable_notification(map)`                |
//! | `disable_notification(map.mem())`         | `disable_notification(map)`               |
//! | `indices()` -> (avail, used)              | `indices()` (packed: wrap bits in bit 15) |
//! | the handler's GET_VRING_BASE answer       | `vring_base()`                            |
//! | `fault()`, `walker.queue_size`, `log()`   | `fault()`, `size()`, `log()`              |
//! | `kick` (the worker's epoll)               | `kick()`                                  |
//!
//! and the worker holds an [`AnyRing`] (so TX and RX take `&mut AnyRing`, or are
//! generic over `Virtqueue`, with no dynamic dispatch per chain).

use vmm_sys_util::eventfd::EventFd;

use super::packed::{PackedRing, PoppedChain};
use super::{Ring, RingFault};
use crate::metrics::QueueMetrics;
use crate::netmem::{DirtyLog, GuestPageMap};
use crate::virtio::chain::Segments;

/// A virtqueue as TX and RX use it.
pub trait Virtqueue {
    /// Chains available to pop now (at least this many); None once the ring is
    /// broken.
    fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16>;
    /// Pop the next chain, its segments in `segs`; None when there is none or the
    /// ring broke.
    fn pop_chain(&mut self, map: &GuestPageMap, segs: &mut Segments) -> Option<PoppedChain>;
    /// Give back the last `n` popped chains.
    fn unpop(&mut self, n: u16);
    /// Return chain `id` with `len` bytes written; false when it cannot be returned.
    fn add_used(&mut self, map: &GuestPageMap, id: u16, len: u32) -> bool;
    /// Show the returned chains to the guest and notify it if it wants.
    fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics);
    /// Ask for kicks; true when chains arrived meanwhile.
    fn enable_notification(&mut self, map: &GuestPageMap) -> bool;
    /// Ask for no kicks.
    fn disable_notification(&mut self, map: &GuestPageMap);
    /// Where the ring stands, for the control plane to start the next worker from:
    /// the split ring's (next avail, next used) indices, the packed ring's two
    /// positions in their word form ([`PackedIndices::words`](super::packed::PackedIndices::words)).
    fn indices(&self) -> (u16, u16);
    /// The ring base `GET_VRING_BASE` answers: the split ring's next avail index,
    /// or the packed ring's [`PackedIndices::vring_base`](super::packed::PackedIndices::vring_base).
    fn vring_base(&self) -> u32;
    /// Why the ring stopped, if it did.
    fn fault(&self) -> Option<RingFault>;
    /// Ring size.
    fn size(&self) -> u16;
    /// The dirty log, while the frontend logs.
    fn log(&self) -> Option<&DirtyLog>;
    /// The eventfd the guest kicks.
    fn kick(&self) -> &EventFd;
}

impl Virtqueue for Ring {
    fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16> {
        Ring::available(self, map, m)
    }

    fn pop_chain(&mut self, map: &GuestPageMap, segs: &mut Segments) -> Option<PoppedChain> {
        let id = self.pop_head(map)?;
        let (chain, slots) = match self.walker.walk(map, id, segs) {
            Ok(slots) => (Ok(()), slots),
            // A bad chain is returned at once; what it took does not matter.
            Err(e) => (Err(e), 1),
        };
        Some(PoppedChain { id, chain, slots })
    }

    fn unpop(&mut self, n: u16) {
        Ring::unpop(self, n);
    }

    fn add_used(&mut self, map: &GuestPageMap, id: u16, len: u32) -> bool {
        Ring::add_used(self, map, id, len)
    }

    fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics) {
        Ring::signal(self, map, m);
    }

    fn enable_notification(&mut self, map: &GuestPageMap) -> bool {
        Ring::enable_notification(self, map.mem())
    }

    fn disable_notification(&mut self, map: &GuestPageMap) {
        Ring::disable_notification(self, map.mem());
    }

    fn indices(&self) -> (u16, u16) {
        Ring::indices(self)
    }

    fn vring_base(&self) -> u32 {
        u32::from(Ring::indices(self).0)
    }

    fn fault(&self) -> Option<RingFault> {
        Ring::fault(self)
    }

    fn size(&self) -> u16 {
        self.walker.queue_size
    }

    fn log(&self) -> Option<&DirtyLog> {
        Ring::log(self)
    }

    fn kick(&self) -> &EventFd {
        &self.kick
    }
}

impl Virtqueue for PackedRing {
    fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16> {
        PackedRing::available(self, map, m)
    }

    fn pop_chain(&mut self, map: &GuestPageMap, segs: &mut Segments) -> Option<PoppedChain> {
        PackedRing::pop_chain(self, map, segs)
    }

    fn unpop(&mut self, n: u16) {
        PackedRing::unpop(self, n);
    }

    fn add_used(&mut self, map: &GuestPageMap, id: u16, len: u32) -> bool {
        PackedRing::add_used(self, map, id, len)
    }

    fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics) {
        PackedRing::signal(self, map, m);
    }

    fn enable_notification(&mut self, map: &GuestPageMap) -> bool {
        PackedRing::enable_notification(self, map)
    }

    fn disable_notification(&mut self, map: &GuestPageMap) {
        PackedRing::disable_notification(self, map);
    }

    fn indices(&self) -> (u16, u16) {
        PackedRing::indices(self).words()
    }

    fn vring_base(&self) -> u32 {
        PackedRing::indices(self).vring_base()
    }

    fn fault(&self) -> Option<RingFault> {
        PackedRing::fault(self)
    }

    fn size(&self) -> u16 {
        PackedRing::size(self)
    }

    fn log(&self) -> Option<&DirtyLog> {
        PackedRing::log(self)
    }

    fn kick(&self) -> &EventFd {
        &self.kick
    }
}

/// A ring of either layout, as the worker will hold it.
#[derive(Debug)]
pub enum AnyRing {
    /// A split ring.
    Split(Ring),
    /// A packed ring.
    Packed(PackedRing),
}

/// Call the same method on whichever ring an [`AnyRing`] holds (a match, no dynamic
/// dispatch).
macro_rules! on_ring {
    ($ring:expr, $r:ident => $call:expr) => {
        match $ring {
            AnyRing::Split($r) => $call,
            AnyRing::Packed($r) => $call,
        }
    };
}

impl Virtqueue for AnyRing {
    fn available(&mut self, map: &GuestPageMap, m: &QueueMetrics) -> Option<u16> {
        on_ring!(self, r => Virtqueue::available(r, map, m))
    }

    fn pop_chain(&mut self, map: &GuestPageMap, segs: &mut Segments) -> Option<PoppedChain> {
        on_ring!(self, r => Virtqueue::pop_chain(r, map, segs))
    }

    fn unpop(&mut self, n: u16) {
        on_ring!(self, r => Virtqueue::unpop(r, n));
    }

    fn add_used(&mut self, map: &GuestPageMap, id: u16, len: u32) -> bool {
        on_ring!(self, r => Virtqueue::add_used(r, map, id, len))
    }

    fn signal(&mut self, map: &GuestPageMap, m: &QueueMetrics) {
        on_ring!(self, r => Virtqueue::signal(r, map, m));
    }

    fn enable_notification(&mut self, map: &GuestPageMap) -> bool {
        on_ring!(self, r => Virtqueue::enable_notification(r, map))
    }

    fn disable_notification(&mut self, map: &GuestPageMap) {
        on_ring!(self, r => Virtqueue::disable_notification(r, map));
    }

    fn indices(&self) -> (u16, u16) {
        on_ring!(self, r => Virtqueue::indices(r))
    }

    fn vring_base(&self) -> u32 {
        on_ring!(self, r => Virtqueue::vring_base(r))
    }

    fn fault(&self) -> Option<RingFault> {
        on_ring!(self, r => Virtqueue::fault(r))
    }

    fn size(&self) -> u16 {
        on_ring!(self, r => Virtqueue::size(r))
    }

    fn log(&self) -> Option<&DirtyLog> {
        on_ring!(self, r => Virtqueue::log(r))
    }

    fn kick(&self) -> &EventFd {
        on_ring!(self, r => Virtqueue::kick(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::ring::packed::PackedRing;
    use crate::datapath::test_guest::driver::Buf;
    use crate::datapath::test_guest::{Rig, TestGuest};
    use crate::datapath::test_packed_guest::PackedDriver;
    use crate::virtio::ChainError;

    /// What TX and RX do, through the trait only: pop every chain, return the good
    /// ones with their total length and the bad ones with 0, signal.
    fn drain(q: &mut impl Virtqueue, map: &GuestPageMap, m: &QueueMetrics) -> Vec<(u16, u32)> {
        let mut segs = Segments::new();
        let mut out = Vec::new();
        let n = q.available(map, m).expect("a working ring");
        for _ in 0..n {
            let p = q.pop_chain(map, &mut segs).expect("as many as available");
            let len = match p.chain {
                Ok(()) => segs.iter().map(|s| s.len).sum(),
                Err(ChainError::ZeroLength) => 0,
                Err(e) => panic!("unexpected {e}"),
            };
            assert!(q.add_used(map, p.id, len));
            out.push((p.id, len));
        }
        q.signal(map, m);
        out
    }

    fn bufs(g: &TestGuest) -> [Vec<Buf>; 3] {
        let b = g.buf(1, 64);
        [
            vec![Buf::ro(b, 10)],
            vec![Buf::ro(b, 4), Buf::ro(b, 6)],
            vec![Buf::ro(b, 0)],
        ]
    }

    #[test]
    fn both_layouts_run_through_one_interface() {
        // Split.
        let mut r = Rig::new(8, |_| {});
        let ids: Vec<u16> = bufs(&r.g).iter().map(|c| r.post(c)).collect();
        let mut ring = AnyRing::Split(r.dev);
        let got = drain(&mut ring, &r.g.map, &r.m);
        assert_eq!(got, vec![(ids[0], 10), (ids[1], 10), (ids[2], 0)]);
        assert_eq!(ring.size(), 8);
        assert_eq!(ring.vring_base(), 3);
        assert_eq!(ring.indices(), (3, 3));
        assert_eq!(ring.fault(), None);
        let AnyRing::Split(dev) = ring else {
            panic!("still split")
        };
        r.dev = dev;
        assert_eq!(r.used_heads(), got);

        // Packed.
        let g = TestGuest::new();
        let mut drv = PackedDriver::new(&g, 0, 4);
        let mut ring = AnyRing::Packed(PackedRing::new(drv.setup()).unwrap());
        let ids: Vec<u16> = bufs(&g).iter().map(|c| drv.add_chain(&g, c)).collect();
        let m = QueueMetrics::default();
        let got = drain(&mut ring, &g.map, &m);
        assert_eq!(got, vec![(ids[0], 10), (ids[1], 10), (ids[2], 0)]);
        let used: Vec<(u16, u32)> = drv.take_used(&g).iter().map(|u| (u.id, u.len)).collect();
        assert_eq!(used, got);
        assert_eq!(ring.size(), 4);
        // Four descriptors used in a ring of four: index 0, wrap counter 0, both sides.
        assert_eq!(ring.vring_base(), 0);
        assert_eq!(ring.indices(), (0, 0));
        assert!(!ring.enable_notification(&g.map));
        assert!(ring.log().is_none());
        assert_eq!(m.notifications.get(), 1);
    }
}
