// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `RxPath` over a packed ring ([`PackedRing`], driven by [`PackedDriver`]): one chain
//! per packet, MRG_RXBUF across several buffers with `num_buffers`, headers passed
//! through as the uplink wrote them, the stash given back, bad buffers dropped, and a
//! hostile ring that breaks without a spin.

use vm_memory::GuestAddress;

use super::*;
use crate::datapath::ring::packed::{PackedRing, PackedSetup, DESC_F_NEXT, DESC_F_WRITE};
use crate::datapath::ring::RingFault;
use crate::datapath::test_guest::driver::Buf;
use crate::datapath::test_guest::{assert_counters, pattern, FakeUplink, TestGuest};
use crate::datapath::test_packed_guest::{PDesc, PUsed, PackedDriver};
use crate::virtio::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_GUEST_TSO4};
use crate::virtio::header::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
use crate::virtio::VirtioNetHdr;

const MTU: u16 = 1500;

/// Nothing but VERSION_1 acked: one chain per packet.
const PLAIN: Features = Features::from_bits(1 << VIRTIO_F_VERSION_1);

/// Merged RX buffers.
const MRG: Features = Features::from_bits(PLAIN.bits() | 1 << VIRTIO_NET_F_MRG_RXBUF);

/// A packet as the uplink delivers it: `hdr` (with a `num_buffers` the device must
/// overwrite), then `payload` bytes.
fn packet(hdr: VirtioNetHdr, payload: usize, seed: u8) -> Vec<u8> {
    let hdr = VirtioNetHdr {
        num_buffers: 0xabcd,
        ..hdr
    };
    [&hdr.to_bytes()[..], &pattern(payload, seed)].concat()
}

/// `pkt` as the guest must find it: `num_buffers` set.
fn delivered(pkt: &[u8], num_buffers: u16) -> Vec<u8> {
    let mut v = pkt.to_vec();
    v[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    v
}

/// A packed RX queue: guest, driver, device ring, uplink and the path under test.
struct PRx {
    g: TestGuest,
    drv: PackedDriver,
    dev: PackedRing,
    up: FakeUplink,
    m: QueueMetrics,
    rx: RxPath,
    features: Features,
    /// Each posted chain's buffers, by id.
    bufs: std::collections::HashMap<u16, Vec<Buf>>,
}

impl PRx {
    fn new(size: u16, features: Features) -> Self {
        Self::with(size, features, |_| {})
    }

    fn with(size: u16, features: Features, tweak: impl FnOnce(&mut PackedSetup)) -> Self {
        let g = TestGuest::new();
        let drv = PackedDriver::new(&g, 0, size);
        let mut setup = drv.setup();
        tweak(&mut setup);
        let dev = PackedRing::new(setup).expect("a usable packed ring");
        PRx {
            g,
            drv,
            dev,
            up: FakeUplink::default(),
            m: QueueMetrics::default(),
            rx: RxPath::default(),
            features,
            bufs: std::collections::HashMap::new(),
        }
    }

    fn process(&mut self) -> RxOutcome {
        self.rx.process(
            &mut self.dev,
            &self.g.map,
            &mut self.up,
            self.features,
            MTU,
            &self.m,
        )
    }

    /// Post a chain of device-writable buffers of these lengths; returns its id.
    fn post(&mut self, lens: &[usize]) -> u16 {
        let bufs: Vec<Buf> = lens.iter().map(|&n| Buf::wo(self.g.buf(1, n), n)).collect();
        let id = self.drv.add_chain(&self.g, &bufs);
        self.bufs.insert(id, bufs);
        id
    }

    fn deliver(&mut self, pkts: &[&Vec<u8>]) {
        self.up
            .inbound
            .extend(pkts.iter().map(|p| Ok((*p).clone())));
    }

    fn used(&mut self) -> Vec<PUsed> {
        self.drv.take_used(&self.g)
    }

    /// The bytes a used descriptor says were written into its chain.
    fn used_bytes(&self, u: &PUsed) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = usize::try_from(u.len).unwrap();
        for b in &self.bufs[&u.id] {
            let n = left.min(usize::try_from(b.len).unwrap());
            out.extend(self.g.read(GuestAddress(b.addr), n));
            left -= n;
        }
        out
    }
}

fn len32(p: &[u8]) -> u32 {
    u32::try_from(p.len()).unwrap()
}

#[test]
fn one_chain_per_packet_without_mrg_rxbuf() {
    let mut t = PRx::new(8, PLAIN);
    let ids: Vec<u16> = (0..3).map(|_| t.post(&[1024, 1024])).collect();
    let csum = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    let (a, b) = (
        packet(csum, 100, 1),
        packet(VirtioNetHdr::default(), 1500, 2),
    );
    t.deliver(&[&a, &b]);
    assert_eq!(t.process(), RxOutcome::Drained);
    let used = t.used();
    assert_eq!(
        used.iter()
            .map(|u| (u.id, u.len, u.written))
            .collect::<Vec<_>>(),
        vec![(ids[0], len32(&a), true), (ids[1], len32(&b), true)]
    );
    // The header as the uplink wrote it, but num_buffers; the second packet spans
    // both buffers of its chain.
    assert_eq!(t.used_bytes(&used[0]), delivered(&a, 1));
    assert_eq!(t.used_bytes(&used[1]), delivered(&b, 1));
    assert_eq!(t.up.offered, vec![2048, 2048], "one chain per packet");
    assert_counters(
        &t.m,
        &[
            ("rx_packets", 2),
            ("rx_bytes", 1600),
            ("rx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn mrg_rxbuf_spreads_a_packet_over_several_chains() {
    let mut t = PRx::new(16, MRG);
    // 512-byte buffers: a 1500-byte MTU frame needs three.
    let ids: Vec<u16> = (0..6).map(|_| t.post(&[512])).collect();
    let big = packet(VirtioNetHdr::default(), 1400, 3);
    let small = packet(VirtioNetHdr::default(), 60, 4);
    t.deliver(&[&big, &small]);
    // Both delivered; the two chains left hold less than a frame: wait for buffers.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![
            (ids[0], 512),
            (ids[1], 512),
            (ids[2], len32(&big) - 1024),
            (ids[3], len32(&small)),
        ]
    );
    let got: Vec<u8> = used[..3].iter().flat_map(|u| t.used_bytes(u)).collect();
    assert_eq!(got, delivered(&big, 3), "num_buffers 3, bytes in order");
    assert_eq!(t.used_bytes(&used[3]), delivered(&small, 1));
    assert_eq!(
        t.up.offered[0], 1536,
        "the stash held a whole frame's worth"
    );
    assert_eq!(t.m.rx_packets.get(), 2);
    // The two chains left stay stashed; a worker stopping gives them back un-popped
    // and the next one delivers into them.
    t.rx.release(&mut t.dev, &t.g.map);
    let mut rx = RxPath::default();
    let c = packet(VirtioNetHdr::default(), 700, 5);
    t.deliver(&[&c]);
    let o = rx.process(&mut t.dev, &t.g.map, &mut t.up, MRG, MTU, &t.m);
    // Two chains of 512 cannot hold a 1530-byte frame and the ring holds more: the
    // guest must post more first.
    assert_eq!(o, RxOutcome::NoBuffers);
    t.post(&[512]);
    let o = rx.process(&mut t.dev, &t.g.map, &mut t.up, MRG, MTU, &t.m);
    // Delivered into the two given back (the third stays stashed).
    assert_eq!(o, RxOutcome::NoBuffers);
    assert!(t.up.inbound.is_empty());
    let used = t.used();
    assert_eq!(
        used.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![ids[4], ids[5]]
    );
    let got: Vec<u8> = used.iter().flat_map(|u| t.used_bytes(u)).collect();
    assert_eq!(got, delivered(&c, 2));
}

#[test]
fn gso_frames_gather_as_many_buffers_as_they_need() {
    let features = Features::from_bits(MRG.bits() | 1 << VIRTIO_NET_F_GUEST_TSO4);
    // A ring whose whole capacity is below a 64 KiB frame still gets packets.
    let mut t = PRx::new(8, features);
    for _ in 0..8 {
        t.post(&[4096]);
    }
    let tso = VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        ..Default::default()
    };
    let p = packet(tso, 10000, 6);
    t.deliver(&[&p]);
    // Delivered; the five chains left hold less than a frame.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.used();
    assert_eq!(used.len(), 3);
    let got: Vec<u8> = used.iter().flat_map(|u| t.used_bytes(u)).collect();
    assert_eq!(got, delivered(&p, 3));
}

#[test]
fn a_ring_of_multi_descriptor_chains_below_a_frame_still_gets_packets() {
    let features = Features::from_bits(MRG.bits() | 1 << VIRTIO_NET_F_GUEST_TSO4);
    // Six slots, three chains of two: every slot is the device's, so the packet goes
    // into what there is.
    let mut t = PRx::new(6, features);
    for _ in 0..3 {
        t.post(&[1000, 1000]);
    }
    let p = packet(VirtioNetHdr::default(), 3000, 7);
    t.deliver(&[&p]);
    // Delivered; then the ring is empty.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.used();
    assert_eq!(used.len(), 2);
    let got: Vec<u8> = used.iter().flat_map(|u| t.used_bytes(u)).collect();
    assert_eq!(got, delivered(&p, 2));
    // One slot still the guest's: wait for it.
    let mut t = PRx::new(6, features);
    for _ in 0..2 {
        t.post(&[1000, 1000]);
    }
    t.post(&[1000]);
    t.deliver(&[&p]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert!(t.used().is_empty());
}

#[test]
fn bad_buffers_are_dropped_counted_and_returned() {
    let mut t = PRx::new(8, PLAIN);
    let r = t.g.buf(1, 2048);
    let readable = t.drv.add_chain(&t.g, &[Buf::ro(r, 2048)]);
    let short = t.post(&[8]);
    let hole = t.drv.add_chain(
        &t.g,
        &[Buf::wo(
            GuestAddress(crate::datapath::test_guest::HOLE_GPA),
            2048,
        )],
    );
    let good = t.post(&[2048]);
    let p = packet(VirtioNetHdr::default(), 100, 7);
    t.deliver(&[&p]);
    // Delivered, then the ring is empty.
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    let used = t.used();
    assert_eq!(
        used.iter().map(|u| (u.id, u.len)).collect::<Vec<_>>(),
        vec![(readable, 0), (short, 0), (hole, 0), (good, len32(&p))]
    );
    assert_eq!(t.used_bytes(&used[3]), delivered(&p, 1));
    assert_eq!(t.m.rx_drop_bad_direction.get(), 1);
    assert_eq!(t.m.rx_drop_short_buffer.get(), 1);
    assert_eq!(t.m.rx_drop_bad_memory.get(), 1);
    assert_eq!(t.dev.fault(), None);
}

#[test]
fn a_hostile_ring_breaks_without_a_spin() {
    let mut t = PRx::new(8, MRG);
    let b = t.g.buf(1, 2048);
    // A descriptor naming a buffer id beyond the ring.
    t.drv.add_raw(
        &t.g,
        &[PDesc {
            addr: b.0,
            len: 2048,
            id: 200,
            flags: DESC_F_WRITE,
        }],
        true,
    );
    t.deliver(&[&packet(VirtioNetHdr::default(), 100, 8)]);
    assert_eq!(t.process(), RxOutcome::NoBuffers);
    assert_eq!(t.dev.fault(), Some(RingFault::Broken));
    assert_eq!(t.m.ring_errors.get(), 1);
    assert!(t.up.offered.is_empty(), "nothing read into a broken ring");
    for _ in 0..3 {
        assert_eq!(t.process(), RxOutcome::NoBuffers);
    }
    assert_eq!(t.m.ring_errors.get(), 1);
    assert_eq!(t.up.inbound.len(), 1, "the packet waits in the uplink");
}

#[test]
fn a_ring_full_of_an_unfinished_chain_is_waited_on_without_a_spin() {
    let mut t = PRx::new(8, MRG);
    let b = t.g.buf(1, 2048);
    // Every descriptor says the chain goes on: no chain is complete (the driver
    // may still be writing it), so none is available and the look ends at once.
    let d = PDesc {
        addr: b.0,
        len: 64,
        id: 0,
        flags: DESC_F_WRITE | DESC_F_NEXT,
    };
    t.drv.add_raw(&t.g, &[d; 8], true);
    t.deliver(&[&packet(VirtioNetHdr::default(), 100, 9)]);
    for _ in 0..3 {
        assert_eq!(t.process(), RxOutcome::NoBuffers);
    }
    assert!(t.up.offered.is_empty());
    assert_eq!(t.m.rx_no_buffers.get(), 3);
    assert!(t.drv.take_used(&t.g).is_empty());
}
