// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `TxPath` over a packed ring ([`PackedRing`], driven by [`PackedDriver`]): the same
//! path as over a split ring, so the same outcomes: headers split across buffers,
//! offload headers, indirect tables, a blocked and a zero-copy uplink, the rate
//! limit giving a chain back, drops, and a hostile ring that breaks without a spin.

use vm_memory::GuestAddress;

use super::*;
use crate::datapath::ring::packed::{PackedRing, PackedSetup};
use crate::datapath::ring::RingFault;
use crate::datapath::test_guest::driver::Buf;
use crate::datapath::test_guest::{assert_counters, pattern, Answer, FakeUplink, TestGuest};
use crate::datapath::test_packed_guest::{PDesc, PUsed, PackedDriver};
use crate::virtio::features::{
    SUPPORTED, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4,
};
use crate::virtio::header::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

/// Nothing but VERSION_1 acked: no offloads.
const PLAIN: Features = Features::from_bits(1 << VIRTIO_F_VERSION_1);

/// A packed TX queue: guest, driver, device ring, uplink and the path under test.
struct PTx {
    g: TestGuest,
    drv: PackedDriver,
    dev: PackedRing,
    up: FakeUplink,
    m: QueueMetrics,
    tx: TxPath,
    features: Features,
}

impl PTx {
    fn new(size: u16, features: Features) -> Self {
        Self::with(size, features, |_| {})
    }

    fn with(size: u16, features: Features, tweak: impl FnOnce(&mut PackedSetup)) -> Self {
        let g = TestGuest::new();
        let drv = PackedDriver::new(&g, 0, size);
        let mut setup = drv.setup();
        tweak(&mut setup);
        let dev = PackedRing::new(setup).expect("a usable packed ring");
        PTx {
            g,
            drv,
            dev,
            up: FakeUplink::default(),
            m: QueueMetrics::default(),
            tx: TxPath::default(),
            features,
        }
    }

    fn process(&mut self) -> TxOutcome {
        self.tx.process(
            &mut self.dev,
            &self.g.map,
            &mut self.up,
            self.features,
            &self.m,
        )
    }

    /// A device-readable buffer holding `bytes`, in `region`.
    fn data(&self, region: usize, bytes: &[u8]) -> Buf {
        let a = self.g.buf(region, bytes.len());
        self.g.write(a, bytes);
        Buf::ro(a, bytes.len())
    }

    /// A packet: `hdr` in its own buffer, then `payload` in `pieces` buffers.
    fn packet(&self, hdr: VirtioNetHdr, payload: &[u8], pieces: usize) -> Vec<Buf> {
        let mut bufs = vec![self.data(1, &hdr.to_bytes())];
        let step = payload.len().div_ceil(pieces).max(1);
        bufs.extend(payload.chunks(step).map(|c| self.data(1, c)));
        bufs
    }

    fn used(&mut self) -> Vec<(u16, u32)> {
        self.drv
            .take_used(&self.g)
            .iter()
            .map(|u: &PUsed| (u.id, u.len))
            .collect()
    }

    fn taken(&self) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        self.up
            .taken()
            .iter()
            .map(|s| (s.hdr, s.bytes.clone()))
            .collect()
    }

    fn calls(&self) -> u64 {
        self.dev.call.as_ref().map_or(0, |c| c.read().unwrap_or(0))
    }
}

fn csum_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    }
}

fn tso_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        csum_offset: 16,
        ..csum_hdr()
    }
}

#[test]
fn packets_over_several_buffers_reach_the_uplink_byte_for_byte() {
    let mut t = PTx::new(8, PLAIN);
    let (a, b) = (pattern(100, 1), pattern(1000, 2));
    let pa = t.packet(VirtioNetHdr::default(), &a, 1);
    let pb = t.packet(VirtioNetHdr::default(), &b, 3);
    let ia = t.drv.add_chain(&t.g, &pa);
    let ib = t.drv.add_chain(&t.g, &pb);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(
        t.taken(),
        vec![(VirtioNetHdr::default(), a), (VirtioNetHdr::default(), b)]
    );
    assert_eq!(t.up.sends[1].frags, 3);
    assert_eq!(t.used(), vec![(ia, 0), (ib, 0)]);
    assert_eq!(t.calls(), 1);
    assert_counters(
        &t.m,
        &[
            ("tx_packets", 2),
            ("tx_bytes", 1100),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn a_header_split_across_buffers_and_offload_headers() {
    let mut t = PTx::new(8, Features::from_bits(SUPPORTED));
    let payload = pattern(300, 3);
    let hdr = csum_hdr().to_bytes();
    // 3 + 4 + 5 header bytes, the last buffer also starting the payload.
    let mut third = hdr[7..].to_vec();
    third.extend_from_slice(&payload[..40]);
    let bufs = [
        t.data(0, &hdr[..3]),
        t.data(1, &hdr[3..7]),
        t.data(1, &third),
        t.data(0, &payload[40..]),
    ];
    let id = t.drv.add_chain(&t.g, &bufs);
    let tso_payload = pattern(3000, 4);
    let tso = t.packet(tso_hdr(), &tso_payload, 2);
    let id2 = t.drv.add_chain(&t.g, &tso);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(
        t.taken(),
        vec![(csum_hdr(), payload), (tso_hdr(), tso_payload)]
    );
    assert_eq!(t.used(), vec![(id, 0), (id2, 0)]);
    assert_counters(
        &t.m,
        &[
            ("tx_packets", 2),
            ("tx_bytes", 3300),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn offloads_not_negotiated_are_dropped_and_counted() {
    // Checksum offload without CSUM, TSO with CSUM but without HOST_TSO4.
    let csum_only = Features::from_bits(PLAIN.bits() | 1 << VIRTIO_NET_F_CSUM);
    for (features, hdr) in [(PLAIN, csum_hdr()), (csum_only, tso_hdr())] {
        let mut t = PTx::new(8, features);
        let bufs = t.packet(hdr, &pattern(100, 5), 1);
        let id = t.drv.add_chain(&t.g, &bufs);
        assert_eq!(t.process(), TxOutcome::Drained);
        assert!(t.up.sends.is_empty());
        assert_eq!(t.used(), vec![(id, 0)]);
        assert_counters(
            &t.m,
            &[
                ("tx_drop_bad_header", 1),
                ("tx_batches", 1),
                ("notifications", 1),
            ],
        );
    }
    // With HOST_TSO4 the same header goes.
    let tso = Features::from_bits(csum_only.bits() | 1 << VIRTIO_NET_F_HOST_TSO4);
    let mut t = PTx::new(8, tso);
    let bufs = t.packet(tso_hdr(), &pattern(100, 5), 1);
    t.drv.add_chain(&t.g, &bufs);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken().len(), 1);
}

#[test]
fn an_indirect_table_is_one_ring_descriptor() {
    let mut t = PTx::with(8, PLAIN, |s| s.indirect = true);
    let payload = pattern(500, 6);
    // Six buffers behind one descriptor (a table may hold up to the ring size).
    let bufs = t.packet(VirtioNetHdr::default(), &payload, 5);
    assert_eq!(bufs.len(), 6);
    let id = t.drv.add_indirect(&t.g, &bufs, 0);
    let small = t.packet(VirtioNetHdr::default(), b"next", 1);
    let id2 = t.drv.add_chain(&t.g, &small);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(
        t.taken(),
        vec![
            (VirtioNetHdr::default(), payload),
            (VirtioNetHdr::default(), b"next".to_vec())
        ]
    );
    assert_eq!(t.used(), vec![(id, 0), (id2, 0)]);
    // Without RING_INDIRECT_DESC negotiated the same table is a bad chain.
    let mut t = PTx::new(4, PLAIN);
    let bufs = t.packet(VirtioNetHdr::default(), &pattern(50, 7), 1);
    let id = t.drv.add_indirect(&t.g, &bufs, 0);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert!(t.up.sends.is_empty());
    assert_eq!(t.used(), vec![(id, 0)]);
    assert_counters(
        &t.m,
        &[
            ("tx_drop_bad_chain", 1),
            ("tx_batches", 1),
            ("notifications", 1),
        ],
    );
}

#[test]
fn a_blocked_uplink_leaves_the_chain_on_the_ring() {
    let mut t = PTx::new(8, PLAIN);
    let ids: Vec<u16> = (0..3)
        .map(|i| {
            let bufs = t.packet(VirtioNetHdr::default(), &pattern(64, i), 1);
            t.drv.add_chain(&t.g, &bufs)
        })
        .collect();
    t.up.answers.extend([
        Answer::Status(SendStatus::Sent),
        Answer::Status(SendStatus::WouldBlock),
    ]);
    assert_eq!(t.process(), TxOutcome::Blocked);
    assert_eq!(t.used(), vec![(ids[0], 0)]);
    assert_eq!(t.m.tx_eagain.get(), 1);
    // Writable again: the refused chain is popped again, then the third.
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.used(), vec![(ids[1], 0), (ids[2], 0)]);
    let bytes: Vec<Vec<u8>> = t.taken().into_iter().map(|(_, b)| b).collect();
    assert_eq!(bytes, vec![pattern(64, 0), pattern(64, 1), pattern(64, 2)]);
    assert_eq!(t.m.tx_packets.get(), 3);
}

#[test]
fn zero_copy_chains_wait_for_their_packets_and_complete_in_send_order() {
    let mut t = PTx::new(8, PLAIN);
    let ids: Vec<u16> = (0..3)
        .map(|i| {
            let bufs = t.packet(VirtioNetHdr::default(), &pattern(80, i), 1);
            t.drv.add_chain(&t.g, &bufs)
        })
        .collect();
    t.up.answers
        .extend([Answer::Status(SendStatus::InFlight); 3].iter().copied());
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.tx.in_flight(), 3);
    assert!(t.used().is_empty(), "a chain in flight went back");
    t.up.complete(2);
    t.tx.poll_in_flight(&mut t.dev, &t.g.map, &mut t.up, &t.m);
    assert_eq!(t.used(), vec![(ids[0], 0), (ids[1], 0)]);
    // The worker stops with one still in flight: returned anyway, bounded.
    t.tx.finish(&mut t.dev, &t.g.map, &mut t.up, &t.m);
    assert_eq!(t.used(), vec![(ids[2], 0)]);
    assert_eq!(t.up.forgotten, 1);
    assert_eq!(t.tx.in_flight(), 0);
}

/// A gate that lets `left` packets through, then asks for 1 µs.
struct Allow {
    left: u32,
    charged: u64,
}

impl Gate for Allow {
    fn check(&self, _bytes: u64) -> Result<(), u64> {
        if self.left > 0 {
            Ok(())
        } else {
            Err(1000)
        }
    }

    fn ready(&self) -> Result<(), u64> {
        self.check(0)
    }

    fn charge(&mut self, bytes: u64) {
        self.left -= 1;
        self.charged += bytes;
    }
}

#[test]
fn the_rate_limit_gives_the_chain_back_until_it_allows_it() {
    let mut t = PTx::new(8, PLAIN);
    let ids: Vec<u16> = (0..2)
        .map(|i| {
            let bufs = t.packet(VirtioNetHdr::default(), &pattern(90, i), 2);
            t.drv.add_chain(&t.g, &bufs)
        })
        .collect();
    let mut gate = Allow {
        left: 1,
        charged: 0,
    };
    let (f, m) = (t.features, &t.m);
    let o =
        t.tx.process_gated(&mut t.dev, &t.g.map, &mut t.up, f, m, &mut gate);
    assert_eq!(o, TxOutcome::Throttled(1000));
    assert_eq!(gate.charged, 90);
    assert_eq!(t.used(), vec![(ids[0], 0)]);
    gate.left = 1;
    let o =
        t.tx.process_gated(&mut t.dev, &t.g.map, &mut t.up, f, &t.m, &mut gate);
    assert_eq!(o, TxOutcome::Drained);
    assert_eq!(t.used(), vec![(ids[1], 0)]);
    assert_eq!(t.taken().len(), 2);
}

#[test]
fn bad_chains_are_dropped_counted_and_returned() {
    let mut t = PTx::new(8, PLAIN);
    // Device-writable, shorter than the header, outside guest memory.
    let w = t.g.buf(1, 64);
    let ids = [
        t.drv.add_chain(&t.g, &[Buf::wo(w, 64)]),
        t.drv.add_chain(&t.g, &[Buf::ro(w, 5)]),
        t.drv.add_chain(
            &t.g,
            &[Buf::ro(
                GuestAddress(crate::datapath::test_guest::HOLE_GPA),
                64,
            )],
        ),
    ];
    let good = t.packet(VirtioNetHdr::default(), b"fine", 1);
    let ok = t.drv.add_chain(&t.g, &good);
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken(), vec![(VirtioNetHdr::default(), b"fine".to_vec())]);
    assert_eq!(
        t.used(),
        vec![(ids[0], 0), (ids[1], 0), (ids[2], 0), (ok, 0)]
    );
    assert_eq!(t.m.tx_drop_bad_direction.get(), 1);
    assert_eq!(t.m.tx_drop_bad_header.get(), 1);
    assert_eq!(t.m.tx_drop_bad_memory.get(), 1);
    assert_eq!(t.dev.fault(), None);
}

#[test]
fn a_hostile_ring_breaks_without_a_spin() {
    let mut t = PTx::new(8, PLAIN);
    let good = t.packet(VirtioNetHdr::default(), b"first", 1);
    let id = t.drv.add_chain(&t.g, &good);
    // Then a descriptor naming a buffer id beyond the ring.
    let b = t.g.buf(1, 64);
    t.drv.add_raw(
        &t.g,
        &[PDesc {
            addr: b.0,
            len: 64,
            id: 200,
            flags: 0,
        }],
        true,
    );
    assert_eq!(t.process(), TxOutcome::Drained);
    assert_eq!(t.taken().len(), 1);
    assert_eq!(t.used(), vec![(id, 0)]);
    assert_eq!(t.dev.fault(), Some(RingFault::Broken));
    assert_eq!(t.m.ring_errors.get(), 1);
    // Every later look ends at once, sends nothing and counts nothing more.
    for _ in 0..3 {
        assert_eq!(t.process(), TxOutcome::Drained);
    }
    assert_eq!(t.taken().len(), 1);
    assert_eq!(t.m.ring_errors.get(), 1);
    assert_eq!(t.m.tx_batches.get(), 1);
}
